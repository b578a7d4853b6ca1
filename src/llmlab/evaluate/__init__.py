"""Evaluation (survey §7): scoring text under a model, metrics, answer extraction and the execution of generated
code.

Where lm-evaluation-harness is installed, importing this package registers the lm-eval model "llmlab"
(llmlab.evaluate.harness)."""

import importlib.util

if importlib.util.find_spec("lm_eval") is not None:
    from llmlab.evaluate import harness  # noqa: F401  (registers the model)
