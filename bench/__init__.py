"""Benchmark harness: ``python -m bench SCENARIO ...`` (see ``--help``)."""
