"""Differential conformance tests: tallyd-aggregator against the real Etsy statsd (harness.py)."""
