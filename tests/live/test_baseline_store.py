"""The stored learned baseline is replaced whole on a real redis-server: no field of an older
layout survives a save, and saving an empty baseline clears the stored one."""

from __future__ import annotations

from redis.asyncio import Redis

from killswitch.store.store import Store


class TestSaveBaseline:
    """`save_baseline` runs in one MULTI: delete, then write what is given."""

    async def test_save_replaces_every_field_and_empty_clears(
        self, redis: Redis, node: str
    ) -> None:
        """A second save drops the first's extra buckets; an empty save leaves no baseline."""
        store = Store(redis, node)
        await store.save_baseline({"v": "1", "bucket:mon-09": "120.5", "bucket:mon-10": "80"})
        await store.save_baseline({"v": "2", "bucket:mon-09": "99"})
        assert await store.load_baseline() == {"v": "2", "bucket:mon-09": "99"}
        await store.save_baseline({})
        assert await store.load_baseline() == {}
        assert await redis.exists(store.keys.baseline) == 0
