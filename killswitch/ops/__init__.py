"""Operator actions as plain functions (kill, arm, status, audit) returning outcomes with
exit codes; the CLI and the demo call them."""
