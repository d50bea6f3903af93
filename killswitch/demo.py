"""`killswitch demo`: the Knight Capital replay (being built; see the issue tracker)."""

from __future__ import annotations


def run_demo(as_json: bool = False) -> int:
    print("killswitch demo: the Knight replay is not built yet.")
    return 0
