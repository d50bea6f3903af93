"""killswitch: a cluster-wide kill switch and aggregate order-volume monitor.

Python trading processes use the in-process gate::

    from killswitch import SidecarThread
    with SidecarThread.from_url("redis://...", node="smars", host="or-01") as sidecar:
        if sidecar.gate.allow(order_id, symbol, side, qty):
            send(order)
"""

from __future__ import annotations

from killswitch.core.version import __version__

__all__ = ["Gate", "SidecarThread", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy, so `python -m killswitch --help` does not import redis and aiohttp.
    if name == "Gate":
        from killswitch.core.enforce.gate import Gate

        return Gate
    if name == "SidecarThread":
        from killswitch.sidecar.inprocess import SidecarThread

        return SidecarThread
    raise AttributeError(name)
