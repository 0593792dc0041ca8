"""Chaos runs: faults injected into two replicas under traffic, and the tally (make chaos)."""
