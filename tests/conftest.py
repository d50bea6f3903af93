"""Shared fixtures: a real redis-server started by the suite itself on a free port.

No mocks and no fakeredis: every test that claims Redis behaviour talks to the real server.
Each test gets its own node name, so tests share one server without sharing state.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from killswitch.sim import fleet as fleetmod
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys, make_operators

os.environ.setdefault("KILLSWITCH_LOG_FORMAT", "json")

# No per-example deadline: on a shared two-core machine one example can take longer than
# hypothesis's 200 ms default for reasons that have nothing to do with the code under test
# (timing claims belong in bench/). The suite's own timeout still bounds every test.
settings.register_profile("killswitch", deadline=None)
settings.load_profile("killswitch")

if "MUTANT_UNDER_TEST" in os.environ:
    # mutmut (`./dev mutants`) runs the selected tests many times in one process, so each
    # property test meets new executors; fixed examples make a mutant's verdict reproducible.
    settings.register_profile(
        "mutants",
        deadline=None,
        suppress_health_check=[HealthCheck.differing_executors],
        derandomize=True,
        database=None,
    )
    settings.load_profile("mutants")
_node_ids = itertools.count(1)

# The files whose live fleets, clusters and replays take longest, longest first (measured with
# `--durations`). The suite runs on pytest-xdist workers a file at a time, in collection order:
# started first, they finish while the short files fill in, instead of one long file keeping a
# worker busy after the other has run out of work.
LONG_FILES_FIRST = (
    "test_tamper", "test_cluster", "test_demo", "test_signed_arm", "test_fleetcap",
    "test_rules_fast_live", "test_faults", "test_ha", "test_anomaly_live", "test_containment",
    "test_fleet", "test_observability", "test_watch", "test_rollout_live", "test_attest_live",
    "test_hardening_live", "test_guarded_live",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long files first; the sort is stable, so each file keeps its own order."""
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Each phase's report on the item (`_fleet_workdirs` keeps a failed test's files)."""
    report = yield
    item.stash.setdefault(_FAILED, False)
    if getattr(report, "failed", False):
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _fleet_workdirs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remove the work directories of the fleets a passing test made (each host's flight
    recorder ring is 10 MiB, written out: a whole run would otherwise leave tens of GB). A
    failing test's stay, for its logs. Fleets of module- or class-scoped fixtures are made
    before this fixture starts (pytest sets up wider scopes first), so they are left alone."""
    made = len(fleetmod.MADE)
    yield
    mine = fleetmod.MADE[made:]
    del fleetmod.MADE[made:]
    if not request.node.stash.get(_FAILED, False):
        for d in mine:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default state directory (in-process gates keep a state file by default) is the
    session's own: node names repeat across sessions, remembered epochs must not."""
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    os.environ.pop("STATE_DIRECTORY", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One redis-server for the whole session (tests that kill Redis start their own)."""
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def node() -> str:
    """A node name no other test in this session uses."""
    return f"n{os.getpid()}-{next(_node_ids)}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test may kill and restart."""
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def operator_keys(tmp_path_factory: pytest.TempPathFactory) -> OperatorKeys:
    """Two throwaway operators (alice, bob) and their allowed-signers file, made once."""
    return make_operators(tmp_path_factory.mktemp("operators"))
