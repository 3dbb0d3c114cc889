"""Throughput benchmarks; run from the repository root."""
