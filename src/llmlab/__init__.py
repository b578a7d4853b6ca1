"""llmlab: the large language models of the surveys, and their whole life cycle, in one readable codebase."""

from llmlab.errors import CheckpointError, ConfigError, DataError, LlmlabError

__version__ = "0.1.0"

# torch is imported on first use, so that the data commands and their worker processes start fast.
_LAZY = {"convert": "llmlab.api", "load": "llmlab.api", "save": "llmlab.api",
         "load_tokenizer": "llmlab.data.tokenizer",
         "Model": "llmlab.model", "ModelConfig": "llmlab.model", "ModelOutput": "llmlab.model"}

__all__ = ["CheckpointError", "ConfigError", "DataError", "LlmlabError", *_LAZY]


def __getattr__(name: str):
    """Import the public names that need torch only when they are first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'llmlab' has no attribute {name!r}")
    import importlib

    if _LAZY[name] == "llmlab.model":
        importlib.import_module("llmlab.infer")  # which gives Model.generate its implementation
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
