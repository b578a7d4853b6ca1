"""Errors a user can cause. Each message is one sentence naming what is wrong and where."""


class LlmlabError(Exception):
    """Base class for every error caused by user input; the CLI prints it and exits 2."""


class ConfigError(LlmlabError, ValueError):
    """A model, recipe or command-line configuration is invalid."""


class CheckpointError(LlmlabError):
    """A checkpoint directory or file is missing, malformed or does not match the model."""


class DataError(LlmlabError):
    """An input data file is missing or malformed."""


class CacheFullError(LlmlabError):
    """A key/value cache has no room left for the tokens of a step (a paged cache's pool of blocks is used up)."""
