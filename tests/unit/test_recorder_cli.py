"""`killswitch recorder` on files: one timeline in text, CSV and JSON, its cuts, and the
one-line refusals (exit codes are part of the interface)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from killswitch.cli.main import main
from killswitch.cli.recordercli import iso_ns, when_ns
from killswitch.core.enforce.recfmt import ALLOW, BLOCK, CANCEL, LINE
from killswitch.runtime.ring import Ring

NS = 1_000_000_000


def make(tmp_path: Path, host: str, times: list[int]) -> Path:
    """A ring of `host` with an allowed, a limited and a cancelled order at `times` (s)."""
    clock = iter(t * NS for t in [0, *times])
    path = tmp_path / f"smars@{host}.rec"
    ring = Ring(str(path), 16, "smars", host, clock_ns=lambda: next(clock))
    ring.set_ids("ab" * 32, "cd" * 32)
    ring.record(LINE, f"{host}-a", "KCG", "BUY", 100, 10.5, ALLOW, "", 3)
    ring.record(LINE, f"{host}-l", "KCG", "SELL", 5000, 0.0, BLOCK, "limit", 3)
    ring.record(LINE, f"{host}-c", "", "", 0, 0.0, CANCEL, "", 3)
    ring.close()
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    return [str(make(tmp_path, "or-01", [10, 20, 30])), str(make(tmp_path, "or-02", [15, 25, 35]))]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["recorder", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


class TestOutput:
    def test_the_table_merges_hosts_oldest_first(
        self, files: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Text by default: a header and one line per record, both hosts interleaved by time."""
        code, out, _ = run(capsys, *files)
        lines = out.splitlines()
        assert code == 0 and lines[0].split()[:4] == ["TIME", "HOST", "SOURCE", "DECISION"]
        assert [ln.split()[6] for ln in lines[1:]] == [
            "or-01-a", "or-02-a", "or-01-l", "or-02-l", "or-01-c", "or-02-c",
        ]  # fmt: skip
        assert lines[3].split()[1:6] == ["or-01", "line", "block", "limit", "3"]
        assert lines[1].split()[-2:] == ["abababababab", "cdcdcdcdcdcd"]

    def test_csv_and_json_carry_the_same_rows(
        self, files: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--csv is a header line and one row per record; --json the same records as objects."""
        _, text, _ = run(capsys, *files, "--csv")
        rows = list(csv.DictReader(io.StringIO(text)))
        _, doc, _ = run(capsys, *files, "--json")
        records = json.loads(doc)["records"]
        assert [r["order_id"] for r in rows] == [r["order_id"] for r in records]
        assert rows[0]["time"] == iso_ns(10 * NS) == records[0]["time"]
        assert (records[1]["host"], records[1]["qty"], records[1]["price"]) == ("or-02", 100, 10.5)

    @pytest.mark.parametrize(
        ("args", "ids"),
        [
            (["--host", "or-02"], ["or-02-a", "or-02-l", "or-02-c"]),
            (["--since", "20", "--until", "30"], ["or-01-l", "or-02-l", "or-01-c"]),
            (["--since", "1970-01-01T00:00:25Z"], ["or-02-l", "or-01-c", "or-02-c"]),
            (["--until", "1970-01-01T00:00:15"], ["or-01-a", "or-02-a"]),
        ],
    )
    def test_cuts(
        self, files: list[str], capsys: pytest.CaptureFixture[str], args: list[str], ids: list[str]
    ) -> None:
        """--host, --since and --until (unix seconds or ISO 8601, UTC without a zone)."""
        _, doc, _ = run(capsys, *files, *args, "--json")
        assert [r["order_id"] for r in json.loads(doc)["records"]] == ids

    def test_a_sidecars_host_in_the_environment_filters_nothing(
        self,
        files: list[str],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """KILLSWITCH_HOST (a sidecar's own name) is not a --host filter: every host shows."""
        monkeypatch.setenv("KILLSWITCH_HOST", "or-01")
        _, doc, _ = run(capsys, *files, "--json")
        assert {r["host"] for r in json.loads(doc)["records"]} == {"or-01", "or-02"}


class TestRefusals:
    def test_another_format_version_is_refused_in_one_line(
        self, files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A version-2 file among good ones: exit 2, nothing printed but one line naming it."""
        other = tmp_path / "new.rec"
        other.write_bytes(b"KSFLTREC\x02\x00" + bytes(500))
        code, out, err = run(capsys, *files, str(other))
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            f"killswitch recorder: {other}: recorder format version 2; "
            "this killswitch reads version 1 only"
        ]

    @pytest.mark.parametrize(
        ("args", "code", "says"),
        [
            (["/nonexistent/x.rec"], 1, "cannot read"),
            (["--since", "yesterday", "x.rec"], 2, "since"),
            (["--around", "0", "x.rec"], 2, "around"),
        ],
    )
    def test_bad_input_is_one_line(
        self, capsys: pytest.CaptureFixture[str], args: list[str], code: int, says: str
    ) -> None:
        """A missing file exits 1; a bad time or epoch is a usage error (2); one line each."""
        got, _, err = run(capsys, *args)
        assert got == code and says in err and len(err.strip().splitlines()) == 1

    def test_no_file_and_no_node_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without FILE the verb needs --node (every host pulled): exit 2 saying so."""
        monkeypatch.delenv("KILLSWITCH_NODE", raising=False)
        code, _, err = run(capsys)
        assert code == 2 and "--node" in err


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("1.5", 1_500_000_000), ("1970-01-01T00:00:01.25Z", 1_250_000_000),
     ("1970-01-01T01:00:00+01:00", 0), ("1970-01-01 00:00:02", 2 * NS)],
)  # fmt: skip
def test_when_ns(text: str, ns: int) -> None:
    """Times are unix seconds or ISO 8601; a zone is honoured, none means UTC."""
    assert when_ns(text) == ns


def test_the_demo_names_the_haunted_hosts_first_orders_after_the_onset(tmp_path: Path) -> None:
    """`first_orders` keeps the first orders from the onset on (no cancels, no markers), each
    with why it was allowed or blocked, and the demo's table prints them."""
    from killswitch.core.enforce.recfmt import HOST, KILL
    from killswitch.sim.demoreport import first_orders

    clock = iter(t * NS for t in range(100))
    ring = Ring(str(tmp_path / "r.rec"), 16, "smars", "or-08", clock_ns=lambda: next(clock))
    for i in range(4):  # at 1 s .. 4 s
        ring.record(LINE, f"o{i}", "KCG", "BUY", 100, 0.0, ALLOW, "", 3)
    ring.record(LINE, "c", "", "", 0, 0.0, CANCEL, "", 3)  # 5 s
    ring.record(HOST, "-", "", "", 0, 0.0, KILL, "killed", 4)  # 6 s
    for i in range(4, 9):  # 7 s .. 11 s
        ring.record(LINE, f"o{i}", "KCG", "BUY", 100, 0.0, BLOCK, "killed", 4)
    rows = first_orders(ring.snapshot(), onset_ms=3000)
    ring.close()
    assert [(r["order_id"], r["decision"], r["after_onset_s"]) for r in rows] == [
        ("o2", "allow", 0.0), ("o3", "allow", 1.0), ("o4", "block", 4.0), ("o5", "block", 5.0),
        ("o6", "block", 6.0),
    ]  # fmt: skip
