"""Scaling: FLOPs, memory, scaling-law fits and sweeps (survey §2.1)."""
