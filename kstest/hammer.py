"""Load for fault tests: one thread per host sending orders back to back through its gate.

Test kit only: nothing in the product imports this package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from killswitch.sim.fleet import Fleet, wait_until


class Hammer:
    """One thread per host sending orders back to back; keeps (monotonic send time, reply).

    `with Hammer(fleet, hosts) as h:` returns once every host answered at least once. A
    restarted sidecar is reconnected to.
    """

    def __init__(self, fleet: Fleet, hosts: Sequence[str]) -> None:
        self.fleet = fleet
        self.replies: dict[str, list[tuple[float, str]]] = {h: [] for h in hosts}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(h,)) for h in hosts]

    def _run(self, host: str) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                with self.fleet.client(host) as c:
                    while not self._stop.is_set():
                        sent = time.monotonic()
                        self.replies[host].append((sent, c.order(f"{host}-{i}")))
                        i += 1
            except OSError:
                time.sleep(0.01)

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        wait_until(lambda: all(self.replies.values()), 10, what="every host answering")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def sent_after(self, host: str, t: float) -> list[str]:
        """Replies to the requests `host` was sent at or after monotonic time `t`."""
        return [r for sent, r in list(self.replies[host]) if sent >= t]

    def wait_for_more(self, t: float, timeout: float = 10.0) -> None:
        """Until every host answered at least one request sent at or after `t`."""
        wait_until(lambda: all(self.sent_after(h, t) for h in self.replies), timeout)


def no_allow_after_first_block(replies: Sequence[tuple[float, str]], reason: str) -> None:
    """Assert that from the first `BLOCK ... <reason>` on, the host never answered ALLOW."""
    seq = [r for _, r in replies]
    first = next(i for i, r in enumerate(seq) if r.startswith("BLOCK") and r.endswith(reason))
    allowed = [r for r in seq[first:] if r.startswith("ALLOW")]
    assert not allowed, f"ALLOW after BLOCK {reason}: {allowed[:3]}"
