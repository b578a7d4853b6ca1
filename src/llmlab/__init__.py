"""llmlab: the large language models of the surveys, and their whole life cycle, in one readable codebase."""

from llmlab.api import convert, load, save
from llmlab.errors import CheckpointError, ConfigError, DataError, LlmlabError
from llmlab.model import Model, ModelConfig, ModelOutput

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "LlmlabError", "Model", "ModelConfig", "ModelOutput",
           "convert", "load", "save"]
