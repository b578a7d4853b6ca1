"""Choosing and ordering the demonstrations of an in-context-learning prompt (survey §6.1.2).

    pool = DemonstrationPool(train_records, text="question")            # indexes built once, on first use
    shots = pool.select(query, k=8, method="bm25", order="most_similar_last")
    shots = select_demonstrations(train_records, query, 8, method="random", seed=0, text="question")

Methods: "random" (seeded by the seed and the query's own text, so that a query gets the same demonstrations
whatever else is asked and in whatever order), "first" (the pool's first k), "bm25" (Okapi BM25 over the pool, as
rank_bm25 computes it), "embedding" (cosine similarity of sentence embeddings from an encoder checkpoint: mean
pooling over the attention mask, then L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2). The query itself
is never among its demonstrations: neither the same object nor a record with the same text.

Orders: "as_selected" (random: as drawn; first: pool order; similarity: most similar first), "most_similar_first",
"most_similar_last" (the closest demonstration right before the query), "random" (seeded as above).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError

METHODS = ("random", "first", "bm25", "embedding")
ORDERS = ("as_selected", "most_similar_first", "most_similar_last", "random")
SIMILARITY_METHODS = ("bm25", "embedding")
BM25_TOKEN = re.compile(r"\w+")  # BM25 tokens: lower-cased runs of letters, digits and underscores
EMBEDDING_BATCH = 32
SENTENCE_TRANSFORMERS_CONFIG = "sentence_bert_config.json"  # its max_seq_length: where sentence-transformers truncates

Record = Any  # a string, or a mapping of named fields
TextOf = str | Callable[[Record], str] | None


def record_text(record: Record, text: TextOf = None) -> str:
    """The text a record is compared by: the record itself when it is a string, else its field `text`, or
    `text(record)`."""
    if callable(text):
        return text(record)
    if text is None:
        if isinstance(record, str):
            return record
        raise ConfigError("Demonstrations that are not strings need text= (a field name or a function) to be compared "
                          "by similarity or text.")
    if not isinstance(record, Mapping) or text not in record:
        raise ConfigError(f"A demonstration record lacks the field {text!r} named by text=.")
    return str(record[text])


def _identity_key(record: Record, text: TextOf) -> str:
    """What makes two records the same for excluding the query: their text, or the whole record without text=."""
    if text is None and not isinstance(record, str):
        return json.dumps(record, sort_keys=True, default=str)
    return record_text(record, text)


def query_seed(seed: int, query: Record, text: TextOf = None) -> int:
    """A seed for one query from the user's seed and the query's text alone (stable across runs and processes)."""
    digest = hashlib.sha256(f"{seed}\0{_identity_key(query, text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def bm25_tokens(text: str) -> list[str]:
    """The lower-cased word tokens BM25 compares."""
    return BM25_TOKEN.findall(text.lower())


def sentence_embeddings(encoder, texts: Sequence[str], *, batch_size: int = EMBEDDING_BATCH,
                        max_length: int | None = None):
    """L2-normalised mean-pooled final hidden states ([len(texts), d_model]) of an encoder-only model (the BERT
    family) with a tokenizer, as sentence-transformers embeds with all-MiniLM-L6-v2; texts are truncated to
    max_length tokens (default: the model's context)."""
    import tokenizers
    import torch

    from llmlab.infer.chat import require_tokenizer

    if getattr(encoder.config, "arch", None) != "encoder":
        raise ConfigError(f"Embedding similarity needs an encoder-only model (the BERT family), not arch "
                          f"{encoder.config.arch!r}.")
    tokenizer = tokenizers.Tokenizer.from_str(require_tokenizer(encoder, "the encoder").to_str())  # a copy to reset
    tokenizer.no_padding()
    tokenizer.enable_truncation(min(max_length or encoder.config.max_seq_len, encoder.config.max_seq_len))
    device = next(encoder.parameters()).device
    pooled = []
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch(list(texts[start:start + batch_size]))
        width = max(len(encoding.ids) for encoding in encodings)  # padded with 0s: masked from attention and pooling
        ids, types, mask = (torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)
                            for rows in ([e.ids for e in encodings], [e.type_ids for e in encodings],
                                         [e.attention_mask for e in encodings]))
        with torch.inference_mode():
            hidden = encoder(ids, attention_mask=mask, token_type_ids=types).hidden_states.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled.append(torch.nn.functional.normalize(mean, p=2, dim=1))
    return torch.cat(pooled) if pooled else torch.zeros(0, encoder.config.d_model)


def _load_encoder(encoder, max_length: int | None):
    """An encoder model, loaded with llmlab.load when given as a checkpoint path, and the length to truncate texts to:
    max_length, else a sentence-transformers directory's max_seq_length (sentence_bert_config.json), else None."""
    if encoder is None:
        raise ConfigError("method 'embedding' needs encoder= (an encoder checkpoint directory or a loaded model).")
    if not isinstance(encoder, (str, os.PathLike)):
        return encoder, max_length
    from llmlab.api import load
    from llmlab.files import read_json_object

    settings = Path(encoder) / SENTENCE_TRANSFORMERS_CONFIG
    if max_length is None and settings.is_file():
        max_length = read_json_object(settings).get("max_seq_length")
    return load(encoder), max_length


def order_demonstrations(demonstrations: Sequence[Record], order: str = "as_selected", *,
                         similarities: Sequence[float] | None = None, seed: int = 0) -> list[Record]:
    """The demonstrations in the order asked; the similarity orders need each one's similarity to the query and keep
    ties in their given order; "random" shuffles with random.Random(seed)."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, not {order!r}.")
    demonstrations = list(demonstrations)
    if order == "as_selected":
        return demonstrations
    if order == "random":
        random.Random(seed).shuffle(demonstrations)
        return demonstrations
    if similarities is None or len(similarities) != len(demonstrations):
        raise ConfigError(f"order {order!r} needs one similarity per demonstration: select them by bm25 or embedding.")
    sign = 1 if order == "most_similar_last" else -1
    ranked = sorted(range(len(demonstrations)), key=lambda i: sign * similarities[i])  # stable: ties keep their order
    return [demonstrations[i] for i in ranked]


class DemonstrationPool:
    """Records to draw demonstrations from, with the BM25 index and the embeddings built once, on first use."""

    def __init__(self, records: Sequence[Record], *, text: TextOf = None, encoder=None,
                 max_length: int | None = None):
        """text names the field (or gives the function) that records are compared by; encoder is an encoder-only
        checkpoint path or model for method "embedding", whose inputs are truncated to max_length tokens (default:
        a sentence-transformers directory's max_seq_length, else the model's context)."""
        self.records = list(records)
        self.text, self.encoder, self.max_length = text, encoder, max_length
        self._keys = None
        self._bm25 = None
        self._embeddings = None

    def _texts(self) -> list[str]:
        return [record_text(record, self.text) for record in self.records]

    def keys(self) -> list[str]:
        """Each record's identity key (its text), for excluding the query."""
        if self._keys is None:
            self._keys = [_identity_key(record, self.text) for record in self.records]
        return self._keys

    def similarities(self, query: Record, method: str) -> list[float]:
        """Every record's similarity to the query: its BM25 score, or the cosine of the embeddings."""
        if method == "bm25":
            if self._bm25 is None:
                from rank_bm25 import BM25Okapi

                self._bm25 = BM25Okapi([bm25_tokens(text) for text in self._texts()])  # k1=1.5, b=0.75, epsilon=0.25
            return [float(score) for score in self._bm25.get_scores(bm25_tokens(record_text(query, self.text)))]
        if method == "embedding":
            if self._embeddings is None:
                self.encoder, self.max_length = _load_encoder(self.encoder, self.max_length)
                self._embeddings = sentence_embeddings(self.encoder, self._texts(), max_length=self.max_length)
            embedded = sentence_embeddings(self.encoder, [record_text(query, self.text)], max_length=self.max_length)
            return (self._embeddings @ embedded[0].to(self._embeddings.device)).tolist()
        raise ConfigError(f"similarity needs method bm25 or embedding, not {method!r}.")

    def select(self, query: Record, k: int, method: str = "random", seed: int = 0, order: str = "as_selected", *,
               exclude: Collection[int] = ()) -> list[Record]:
        """k demonstrations for the query, chosen by method and put in order: never the query itself, nor the
        records at the indices in exclude (e.g. the query's own row of the pool in another form)."""
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"the number of demonstrations must be a whole number >= 0, not {k!r}.")
        query_key = _identity_key(query, self.text)
        exclude = set(exclude)
        candidates = [i for i, (record, key) in enumerate(zip(self.records, self.keys()))
                      if record is not query and key != query_key and i not in exclude]
        if k > len(candidates):
            raise ConfigError(f"{k} demonstrations were asked for, but the pool holds only {len(candidates)} other "
                              f"than the query.")
        similarities = None
        if method == "first":
            chosen = candidates[:k]
        elif method == "random":
            chosen = random.Random(query_seed(seed, query, self.text)).sample(candidates, k)
        else:
            scores = self.similarities(query, method)
            chosen = sorted(candidates, key=lambda i: -scores[i])[:k]  # stable: ties go to the earlier record
            similarities = [scores[i] for i in chosen]
        return order_demonstrations([self.records[i] for i in chosen], order, similarities=similarities,
                                    seed=query_seed(seed + 1, query, self.text))


def select_demonstrations(pool: Sequence[Record] | DemonstrationPool, query: Record, k: int, method: str = "random",
                          seed: int = 0, *, order: str = "as_selected", text: TextOf = None, encoder=None,
                          exclude: Collection[int] = ()) -> list[Record]:
    """k demonstrations from the pool for the query by method ("random", "first", "bm25", "embedding"), in order,
    never the query nor the pool's records at the indices in exclude; pass a DemonstrationPool to reuse its BM25 index
    and embeddings across queries."""
    if not isinstance(pool, DemonstrationPool):
        pool = DemonstrationPool(pool, text=text, encoder=encoder)
    return pool.select(query, k, method, seed, order, exclude=exclude)
