"""Sections of scripts/benchmark.py: each module defines run(quick: bool) -> dict."""
