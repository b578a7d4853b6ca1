"""Utilisation (survey §6): key/value caches, token choice, generate and stream."""

from llmlab.infer.cache import DynamicCache, StaticCache
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import BlankTokens, GenerationResult, Piece, generate, stream
from llmlab.infer.paged import BlockAllocator, PagedCache

__all__ = ["BlankTokens", "BlockAllocator", "DynamicCache", "GenerationConfig", "GenerationResult", "PagedCache", "Piece",
           "StaticCache", "generate", "stream"]
