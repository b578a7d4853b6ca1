"""Evaluation (survey §7): scoring text under a model, metrics and tasks."""
