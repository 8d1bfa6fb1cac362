"""Benchmarks of a real controller (``scripts/bench``), kept out of the unit tests.

Performance targets live here, never in timed tests: a benchmark starts real
processes on loopback, drives them at a fixed rate and reports figures (and,
when the issue names a peer, ratios against it measured in the same run).
"""
