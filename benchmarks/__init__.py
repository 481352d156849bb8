"""Benchmarks: run each as `python -m benchmarks.NAME` from the repository root; results and
conclusions in benchmarks/README.md."""
