"""Scaling (survey §2.1): FLOPs and memory estimates (estimate.py) and scaling-law fits (fit.py)."""
