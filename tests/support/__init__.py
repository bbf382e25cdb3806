"""Test vectors shared by several test layers (the launchers, sinks and clients the tests use
live in the top-level ``harness`` package)."""
