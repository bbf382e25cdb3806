"""Helpers shared by the conformance and end-to-end tests: a Graphite sink, daemon launchers
(tallyd's aggregator, the reference Etsy statsd) and a wrapper around tools/localcarbon.py."""
