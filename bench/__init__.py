"""Benchmarks: ``python -m bench.run`` (see docs/BENCHMARKS.md)."""
