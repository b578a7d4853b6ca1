"""Scaling (survey §2.1): FLOPs and memory estimates (estimate.py), scaling-law fits (fit.py) and their plots."""
