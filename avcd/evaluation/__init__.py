"""Scoring splits, detection metrics, reports, and the statistics of comparisons."""
