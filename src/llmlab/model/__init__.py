"""The architecture (survey §4.2): one config-driven model for every family."""

from llmlab.model.attention import AttentionSpec, Cache
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Model, ModelOutput

__all__ = ["AttentionSpec", "Cache", "Model", "ModelConfig", "ModelOutput"]
