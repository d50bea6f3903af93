"""The durability check on a real Redis that will not answer `CONFIG GET` (renamed or denied
by an ACL): it falls back to `INFO persistence`, and says so when neither answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store import durability


@pytest.fixture
async def admin(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _check_as(server: EmbeddedRedis, user: str, password: str) -> durability.Durability:
    client = Redis.from_url(
        f"redis://{user}:{password}@127.0.0.1:{server.port}/0", decode_responses=True
    )
    try:
        return await durability.check(client)
    finally:
        await client.aclose()


class TestConfigRenamed:
    """`rename-command CONFIG ""`: the command does not exist for anyone."""

    @pytest.mark.parametrize("appendonly", [True, False])
    async def test_info_answers_what_config_would_have(self, appendonly: bool) -> None:
        """With CONFIG renamed away, the check reads aof_enabled from INFO and reports it."""
        with EmbeddedRedis(
            appendonly=appendonly, extra_args=["--rename-command", "CONFIG", '""']
        ) as server:
            client = Redis.from_url(server.url, decode_responses=True)
            try:
                with pytest.raises(ResponseError, match="unknown command"):
                    await client.config_get("appendonly")
                found = await durability.check(client)
            finally:
                await client.aclose()
        assert found == durability.Durability(
            appendonly, "info", f"INFO persistence aof_enabled: {int(appendonly)}"
        )


class TestConfigDeniedByAcl:
    """An ACL user without +config (a common production setup) is refused CONFIG GET."""

    async def test_user_without_config_falls_back_to_info(
        self, redis_server: EmbeddedRedis, admin: Redis, node: str
    ) -> None:
        """A user denied CONFIG still learns appendonly is off, from INFO persistence."""
        user = f"noconf-{node}"
        await admin.execute_command(
            "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-config"
        )
        try:
            found = await _check_as(redis_server, user, "pw")
        finally:
            await admin.execute_command("ACL", "DELUSER", user)
        assert found == durability.Durability(False, "info", "INFO persistence aof_enabled: 0")

    async def test_user_without_config_or_info_gets_no_verdict(
        self, redis_server: EmbeddedRedis, admin: Redis, node: str
    ) -> None:
        """Denied both CONFIG and INFO, the check answers "unknown" and names the refusal."""
        user = f"noinfo-{node}"
        await admin.execute_command(
            "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-config", "-info"
        )
        try:
            found = await _check_as(redis_server, user, "pw")
        finally:
            await admin.execute_command("ACL", "DELUSER", user)
        assert found.enabled is None
        assert found.source == ""
        assert found.detail.startswith("neither CONFIG nor INFO persistence answered: ")
        assert "info" in found.detail

    async def test_user_allowed_config_is_answered_by_config(
        self, redis_server: EmbeddedRedis, admin: Redis, node: str
    ) -> None:
        """The control case: a user allowed CONFIG gets the answer from CONFIG GET itself."""
        user = f"conf-{node}"
        await admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
        try:
            found = await _check_as(redis_server, user, "pw")
        finally:
            await admin.execute_command("ACL", "DELUSER", user)
        assert found == durability.Durability(False, "config", "CONFIG GET appendonly: no")
