"""The sidecars' Redis Functions library as built from `store/lua/`: named by a digest of its
code, every function name carrying that name (pure: no server)."""

from __future__ import annotations

import pytest

from killswitch.store import scripts
from killswitch.store.scripts import function_missing, sidecar_library


class TestLibrary:
    """The library's name is a digest of its code, and names every function in it."""

    def test_name_is_a_digest_of_the_code(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Built twice: the same library; one byte changed in a script: another name."""
        lib = sidecar_library()
        assert lib.code.startswith(f"#!lua name={lib.name}\n")
        assert lib.name.startswith("killswitch_") and len(lib.name) == len("killswitch_") + 16
        assert f"function_name='{lib.function('flush')}'" in lib.code
        assert sidecar_library.__wrapped__() == lib
        original = scripts.plain_script
        monkeypatch.setattr(
            scripts, "plain_script", lambda name: original(name).replace("local t =", "local t  =")
        )
        changed = sidecar_library.__wrapped__()
        assert changed.name != lib.name and lib.name not in changed.code

    def test_not_found_is_told_from_other_errors(self) -> None:
        """Only Redis's "Function not found" reply means the library is missing."""
        assert function_missing(Exception("Function not found"))
        assert not function_missing(Exception("NOPERM this user has no permissions"))
        assert not function_missing(Exception("ERR Error running script"))
