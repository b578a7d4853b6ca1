"""Utilisation (survey §6): key/value caches, token choice, generate and stream, and the serving engine."""

from llmlab.infer.cache import DynamicCache, RaggedCache, StaticCache
from llmlab.infer.config import GenerationConfig
from llmlab.infer.engine import AsyncEngine, Engine, EngineFullError, RequestOutput
from llmlab.infer.generate import BlankTokens, GenerationResult, Piece, generate, stream
from llmlab.infer.paged import BlockAllocator, PagedCache
from llmlab.infer.prepack import prepack, unpack

__all__ = ["AsyncEngine", "BlankTokens", "BlockAllocator", "DynamicCache", "Engine", "EngineFullError",
           "GenerationConfig", "GenerationResult", "PagedCache", "Piece", "RaggedCache", "RequestOutput", "StaticCache",
           "generate", "prepack", "stream", "unpack"]
