"""Signing by `ssh-keygen -Y sign` when OpenSSH is missing, broken, slow or refuses the key.

Each case puts a real program (or none) where `ssh-keygen` is looked up, and checks the one
line `SignError` gives the operator, and that no signing process is left behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from killswitch.core.proof.sshsig import parse_allowed_signers, verify
from killswitch.ops import signing
from killswitch.ops.arming import kill_actor
from killswitch.ops.signing import SignError, ssh_sign
from killswitch.sim.operators import OperatorKeys
from kstest import wait_until_async

SLEEP = shutil.which("sleep")  # resolved before a test narrows PATH


def only_on_path(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    monkeypatch.setenv("PATH", str(directory))


def program(directory: Path, text: str) -> Path:
    """An executable `ssh-keygen` in `directory` with the given contents."""
    directory.mkdir(exist_ok=True)
    exe = directory / "ssh-keygen"
    exe.write_text(text)
    exe.chmod(0o755)
    return exe


def gone(pid: int) -> bool:
    """The process is reaped, or a zombie (killed, not yet waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


class TestSignErrors:
    """Every way signing fails is one SignError line that says what to do."""

    async def test_real_key_signs_and_verifies(self, operator_keys: OperatorKeys) -> None:
        """The real ssh-keygen's signature verifies as the key's principal."""
        ops = parse_allowed_signers(operator_keys.file.read_text())
        sig = await ssh_sign(operator_keys.key("alice"), b"hello")
        assert sig.startswith("-----BEGIN SSH SIGNATURE-----") and sig.endswith("\n")
        assert verify(ops, b"hello", sig) == "alice"

    async def test_no_ssh_keygen_on_path(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without ssh-keygen the error says to install OpenSSH."""
        only_on_path(monkeypatch, tmp_path)
        with pytest.raises(SignError, match="ssh-keygen not found: install OpenSSH"):
            await ssh_sign("any.key", b"m")

    async def test_ssh_keygen_cannot_be_run(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """An ssh-keygen the kernel cannot execute is reported as 'cannot run ssh-keygen'."""
        program(tmp_path / "bin", "")  # executable bit, no format the kernel knows
        only_on_path(monkeypatch, tmp_path / "bin")
        with pytest.raises(SignError, match="cannot run ssh-keygen: "):
            await ssh_sign("any.key", b"m")

    async def test_missing_key_names_the_key_and_ssh_keygen_reason(self, tmp_path: Path) -> None:
        """A key file that does not exist: the message names it and ssh-keygen's last line."""
        key = tmp_path / "nobody.key"
        with pytest.raises(SignError) as e:
            await ssh_sign(str(key), b"m")
        text = str(e.value)
        assert text.startswith(f"ssh-keygen could not sign with {key}: ")
        assert "\n" not in text and not text.endswith(": ")

    async def test_failure_without_a_word_says_failed(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """An ssh-keygen that fails silently is reported as 'failed'."""
        program(tmp_path / "bin", "#!/bin/sh\nexit 1\n")
        only_on_path(monkeypatch, tmp_path / "bin")
        with pytest.raises(SignError, match=r"could not sign with k\.key: failed$"):
            await ssh_sign("k.key", b"m")

    async def test_a_signer_that_never_answers_is_killed_at_the_timeout(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """An ssh-keygen waiting forever (a touch, a prompt) is killed and reported."""
        pidfile = tmp_path / "pid"
        program(tmp_path / "bin", f"#!/bin/sh\necho $$ > {pidfile}\nexec {SLEEP} 300\n")
        only_on_path(monkeypatch, tmp_path / "bin")
        monkeypatch.setattr(signing, "SIGN_TIMEOUT_S", 0.5)
        with pytest.raises(SignError, match=r"did not sign within 0\.5s"):
            await ssh_sign("k.key", b"m")
        assert gone(int(pidfile.read_text()))

    async def test_a_cancelled_caller_leaves_no_signer_waiting(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A caller's own deadline cancels the signing and kills ssh-keygen."""
        pidfile = tmp_path / "pid"
        program(tmp_path / "bin", f"#!/bin/sh\necho $$ > {pidfile}\nexec {SLEEP} 300\n")
        only_on_path(monkeypatch, tmp_path / "bin")
        task = asyncio.ensure_future(ssh_sign("k.key", b"m"))
        await wait_until_async(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pid = int(pidfile.read_text())
        await wait_until_async(lambda: gone(pid), 10, 0.02, "ssh-keygen killed")


class TestKillActor:
    """A signed kill is recorded as its principal, else unsigned with a warning, never held up."""

    async def test_verified_signature_names_the_principal(
        self, operator_keys: OperatorKeys
    ) -> None:
        """alice's key and the operators file: the kill is recorded as alice, no warning."""
        who, note, _ = await kill_actor(
            "n1", operator_keys.key("alice"), str(operator_keys.file), "someone", "why"
        )
        assert (who, note) == ("alice", "")

    @pytest.mark.parametrize(
        ("ops_file", "says"),
        [
            ("", "no --operators file to check the signature against"),
            ("/nonexistent/operators", "No such file"),
        ],
    )
    async def test_without_a_usable_operators_file_it_is_recorded_unsigned(
        self, operator_keys: OperatorKeys, ops_file: str, says: str
    ) -> None:
        """No operators file, or a missing one: the fallback name and a warning saying why."""
        who, note, _ = await kill_actor("n1", operator_keys.key("alice"), ops_file, "carol", "why")
        assert who == "carol"
        assert note.startswith("warning: kill recorded unsigned, as 'carol': ") and says in note

    async def test_key_outside_the_operators_file_is_recorded_unsigned(
        self, operator_keys: OperatorKeys, tmp_path: Path
    ) -> None:
        """A key whose signature does not verify against the file: unsigned, with a warning."""
        other = tmp_path / "ops"
        other.write_text(operator_keys.file.read_text().splitlines()[1] + "\n")  # bob only
        who, note, _ = await kill_actor("n1", operator_keys.key("alice"), str(other), "carol", "x")
        assert who == "carol" and note.startswith("warning: kill recorded unsigned")


def test_pidfile_helper_sees_a_live_process() -> None:
    """`gone` is false for this very process, so the kill checks above can fail."""
    assert not gone(os.getpid())
