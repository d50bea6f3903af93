"""The PromQL the repo ships, as text: every expression of the dashboards and alert rules.

`extract_exprs()` lists every PromQL expression in the dashboards and alert rules, with
Grafana's template variables substituted, so a test can evaluate each one against a real
Prometheus (`kstest.promharness`). Test tooling only: services never import this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"

# What the dashboards' template variables stand for when an expression is evaluated outside
# Grafana. $__rate_interval is 4 x the 1 s scrape interval plus margin, as Grafana would pick.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "node": "smars",
    "window": "10s",
    "datasource": "prometheus",
    "__rate_interval": "5s",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
# Grafana query-variable functions whose argument is PromQL: query_result(EXPR) and
# label_values(SELECTOR, label); label_names() and metrics() carry no expression.
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*\w+\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class PromExpr:
    """One PromQL expression and where it came from (for failure messages)."""

    origin: str  # e.g. "dashboards/node-overview.json panel 9 'Node orders...' refId A"
    expr: str  # template variables already substituted


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana template variables ($x, ${x}, ${x:fmt}, [[x]]); unknown ones raise."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(one, expr)


def _variable_expr(query: object) -> str | None:
    """The PromQL inside a query variable's definition, if it has any."""
    text = query.get("query") if isinstance(query, dict) else query
    if not isinstance(text, str):
        return None
    for pattern in (_QUERY_RESULT, _LABEL_VALUES):
        match = pattern.match(text)
        if match:
            return match.group("expr")
    return None


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows nest their panels


def dashboard_exprs(path: Path, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> list[PromExpr]:
    """Every PromQL expression of one dashboard JSON: panel targets and query variables."""
    board = json.loads(path.read_text())
    name = path.name
    found: list[PromExpr] = []
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            inner = _variable_expr(var.get("query"))
            if inner is not None:
                origin = f"{name} variable ${var.get('name')}"
                found.append(PromExpr(origin, substitute(inner, variables)))
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                origin = (
                    f"{name} panel {panel.get('id')} {panel.get('title')!r} "
                    f"refId {target.get('refId')}"
                )
                found.append(PromExpr(origin, substitute(expr, variables)))
    return found


def rule_exprs(path: Path = ALERT_RULES) -> list[PromExpr]:
    """Every `expr` of a Prometheus rule file (alerting and recording rules)."""
    import yaml  # noqa: PLC0415  test-only dependency: only this helper reads YAML

    doc = yaml.safe_load(path.read_text())
    found: list[PromExpr] = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            found.append(PromExpr(f"{path.name} {name}", str(rule["expr"]).strip()))
    return found


def extract_exprs(
    node: str = "smars",
    *,
    root: Path = REPO_ROOT,
    variables: Mapping[str, str] | None = None,
) -> list[PromExpr]:
    """Every PromQL expression in dashboards/*.json and deploy/prometheus/alerts.yml.

    Dashboard template variables are replaced: `$node` by `node`, the rest from
    DEFAULT_VARIABLES updated with `variables`. A variable with no value raises KeyError, so a
    new dashboard variable cannot silently escape evaluation.
    """
    values = {**DEFAULT_VARIABLES, "node": node, **(variables or {})}
    found: list[PromExpr] = []
    for path in sorted((root / "dashboards").glob("*.json")):
        found.extend(dashboard_exprs(path, values))
    found.extend(rule_exprs(root / "deploy" / "prometheus" / "alerts.yml"))
    return found
