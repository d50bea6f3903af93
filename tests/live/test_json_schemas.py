"""The published JSON Schemas (docs/schemas/) hold for real output of every JSON verb, and
they are strict enough to refuse the old untyped aggregator block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from killswitch.view.ruleview import decode_view
from kstest import Fleet

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def valid(name: str, doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema(name)).validate(doc)


class TestSchemasAgainstRealOutput:
    """One fleet of two real sidecars and an aggregator, every JSON verb's output validated."""

    def test_every_verb_validates(self, redis_url: str, node: str) -> None:
        """status (unarmed, armed), arm (pending, done), kill, audit, audit --verify, status --fleet."""
        f = Fleet(redis_url, node, ["or-01", "or-02"])
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(20)
            code, rep = f.cli_json("status")
            valid("status", rep)
            assert isinstance(rep["aggregator"]["trips"], int), rep["aggregator"]
            code, rep = f.cli_json("arm", "--key", f.ops.key("alice"), "--reason", "open")
            assert code == 5, rep
            valid("arm", rep)
            assert rep["pending_arm"]["by"] == "alice"
            code, rep = f.cli_json("arm", "--key", f.ops.key("bob"), "--reason", "open")
            assert code == 0, rep
            valid("arm", rep)
            code, rep = f.cli_json("status")
            assert code == 0, rep
            valid("status", rep)
            code, rep = f.cli_json("kill", "--reason", "drill", "--operator", "sre")
            assert code == 0, rep
            valid("kill", rep)
            code, rep = f.cli_json("audit")
            valid("audit", rep)
            assert [e["action"] for e in rep["entries"]][-1] == "kill"
            code, rep = f.cli_json("audit", "--verify")
            assert code == 0, rep
            valid("audit", rep)
            code, rep = f.cli_json("status", "--fleet")
            valid("status-fleet", rep)
            for one in rep["nodes"].values():
                if "error" not in one:
                    valid("status", one)
        finally:
            f.stop()


class TestSchemasRefuse:
    """The schemas are not vacuous: what they exist to rule out is refused."""

    @pytest.mark.parametrize(
        ("field", "raw"), [("trips", "0"), ("max_orders", "50"), ("redis_durable", "0")]
    )
    def test_untyped_aggregator_fields_are_refused(self, field: str, raw: str) -> None:
        """A raw Redis string where a number or boolean belongs fails the status schema."""
        doc = {
            "node": "n", "state": "ARMED", "epoch": 1, "reason": "", "roster": [],
            "confirmed": [], "missing": [], "hosts": {}, "disagree": {},
            "aggregator": {field: raw},
        }  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            valid("status", doc)

    def test_decode_view_types_what_the_schema_requires(self) -> None:
        """The aggregator hash decodes to numbers, booleans and null; junk reads as null."""
        view = decode_view(
            {"trips": "3", "max_orders": "", "warm": "1", "redis_durable": "0",
             "expected": "12.5", "tick_ms": "junk", "window_s": "inf", "instance": "a"}
        )  # fmt: skip
        assert view == {
            "trips": 3, "max_orders": None, "warm": True, "redis_durable": False,
            "expected": 12.5, "tick_ms": None, "window_s": None, "instance": "a",
        }  # fmt: skip
        doc = {
            "node": "n", "state": "KILLED", "epoch": 2, "reason": "r", "roster": ["a"],
            "confirmed": ["a"], "missing": [], "hosts": {}, "disagree": {}, "aggregator": view,
        }  # fmt: skip
        valid("status", doc)
