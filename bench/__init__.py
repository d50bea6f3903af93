"""Benchmarks: `./dev bench` (or `python -m bench [name ...]`). Results: docs/PERFORMANCE.md."""
