"""Pull every host's flight recorder: each host's metrics address from its report in Redis,
then `GET /recorder` (a kill's frozen file with `epoch`) from each, side by side.

Returns raw file bytes per host; `core.enforce.recfmt` decodes them. Nothing here prints.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

FETCH_TIMEOUT_S = 5.0


async def metrics_addresses(redis_url: str, node: str) -> dict[str, str]:
    """Host -> its reported metrics address ("" when it reports none), for every host of the
    node's roster and every off-roster host that reports."""
    from killswitch.store.redisconn import connect
    from killswitch.store.store import Store

    redis = connect(redis_url, socket_timeout=5.0, client_name=f"ks-recorder-{node}")
    try:
        snap = await Store(redis, node).snapshot()
    finally:
        await redis.aclose()
    hosts = sorted({*snap.roster, *snap.unlisted, *snap.reports})
    return {h: snap.reports.get(h, {}).get("metrics", "") for h in hosts}


def fetch(address: str, epoch: int | None, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """One host's ring (or its frozen file of `epoch`) from `http://address/recorder`."""
    query = f"?epoch={epoch}" if epoch is not None else ""
    with urllib.request.urlopen(f"http://{address}/recorder{query}", timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


async def pull(addresses: dict[str, str], epoch: int | None) -> dict[str, bytes | str]:
    """Host -> its file's bytes, or why it could not be read (one line)."""

    async def one(host: str, address: str) -> bytes | str:
        if not address:
            return "reports no metrics address (start its sidecar with --metrics-port)"
        try:
            return await asyncio.to_thread(fetch, address, epoch)
        except urllib.error.HTTPError as e:
            return f"{address}: HTTP {e.code} {e.reason}"
        except (OSError, ValueError) as e:
            return f"{address}: {getattr(e, 'reason', None) or e}"

    results = await asyncio.gather(*(one(h, a) for h, a in addresses.items()))
    return dict(zip(addresses, results, strict=True))
