"""Evaluation (survey §7): metrics, answer extraction and the execution of generated code."""
