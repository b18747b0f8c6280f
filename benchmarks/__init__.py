"""Reproducible performance measurements (not tests): run with `python -m benchmarks.<name>`."""
