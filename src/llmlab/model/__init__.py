"""The architecture (survey §4.2): one config-driven model for every family."""

from llmlab.model.attention import KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Model, ModelOutput

__all__ = ["KVCache", "Model", "ModelConfig", "ModelOutput"]
