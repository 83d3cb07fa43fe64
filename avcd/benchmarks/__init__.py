"""Throughput measurements (`python -m avcd.benchmarks.<name>`)."""
