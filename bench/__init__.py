"""Benchmarks, runnable as scripts and importable so `make bench` can call them."""
