"""Reproducible benchmarks against peers; run ``python -m benchmarks [name ...]``."""
