"""Tokenizers trained and stored with Hugging Face `tokenizers`: GPT-2's byte-level BPE, and SentencePiece-style
BPE and Unigram over characters, with byte fallback for unseen characters and digits split one per token.

Every tokenizer decodes back exactly the text it encoded (any Unicode), is saved as one tokenizer.json that
transformers' PreTrainedTokenizerFast loads, and gives its special tokens the first ids, END_OF_TEXT and PAD first.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llmlab.data.jsonl import atomic_writer
from llmlab.data.paths import atomic_path, is_remote, location
from llmlab.errors import ConfigError, DataError

END_OF_TEXT = "<|endoftext|>"
PAD = "<pad>"
DEFAULT_SPECIAL_TOKENS = (END_OF_TEXT, PAD)
TOKENIZER_FILE = "tokenizer.json"

# The special tokens the pretraining objectives need, by name (objectives take their ids).
SENTINEL = "<extra_id_{}>"  # T5's sentinels, <extra_id_0> first
UL2_MODE_TOKENS = {"R": "[R]", "S": "[S]", "X": "[X]"}
MASK, SENTENCE_MASK, GENERATION_MASK = "[MASK]", "[sMASK]", "[gMASK]"  # BERT's and GLM's masks
START_OF_PIECE, END_OF_PIECE = "<|startofpiece|>", "<|endofpiece|>"  # GLM's [sop] and [eop]

KINDS = ("byte_bpe", "bpe", "unigram")
OBJECTIVES = ("causal", "prefix_lm", "span_corruption", "ul2", "glm", "mlm")
UNKNOWN = "<unk>"  # the SentencePiece-style models' unknown piece; byte fallback means it is never emitted
BYTE_PIECES = tuple(f"<0x{byte:02X}>" for byte in range(256))  # SentencePiece's byte-fallback pieces
DEFAULT_CHARACTER_COVERAGE = 0.9995  # SentencePiece's default: rarer characters are left to byte fallback
# Spaces stay literal in the pieces, not SentencePiece's "▁", so that a literal "▁" in the text decodes back as
# itself. A pre-token is a word with at most one leading space, a run of newlines, or a run of spaces (less the
# last one when a word follows).
WORD_PATTERN = " ?[^ \n]+|\n+| +(?![^ \n])"
SCORE_DECIMALS = 6  # unigram training's scores differ between runs in the last bits (summation order)
UNIGRAM_BACKFILL_STEP = 1e-4  # tokenizers' UnigramTrainer: the score step between the characters EM dropped


def objective_special_tokens(objective: str, sentinels: int = 100) -> tuple[str, ...]:
    """The special tokens a pretraining objective needs, beyond END_OF_TEXT and PAD."""
    if sentinels < 0:
        raise ConfigError(f"the number of sentinels {sentinels} must not be negative.")
    sentinel_tokens = tuple(SENTINEL.format(index) for index in range(sentinels))
    tokens = {
        "causal": (),
        "prefix_lm": (),
        "span_corruption": sentinel_tokens,
        "ul2": tuple(UL2_MODE_TOKENS.values()) + sentinel_tokens,
        "glm": (MASK, SENTENCE_MASK, GENERATION_MASK, START_OF_PIECE, END_OF_PIECE),
        "mlm": (MASK,),
    }
    if objective not in tokens:
        raise ConfigError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}.")
    return tokens[objective]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    kind: str = "byte_bpe",
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    split_digits: bool | None = None,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer of the given kind (byte_bpe, bpe or unigram) on texts; special tokens take the first ids.

    split_digits defaults to False for byte_bpe (as GPT-2) and True for bpe and unigram (as LLaMA);
    min_frequency applies to the BPE kinds, character_coverage to bpe and unigram.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}: choose one of {', '.join(KINDS)}.")
    specials = _ordered_special_tokens(special_tokens)
    if split_digits is None:
        split_digits = kind != "byte_bpe"
    if kind == "byte_bpe":
        return _train_byte_level_bpe(texts, vocab_size, specials, min_frequency, split_digits, progress)
    return _train_sentencepiece_style(
        texts, vocab_size, kind, specials, min_frequency, split_digits, character_coverage, progress
    )


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer on texts; special tokens take the first ids."""
    return train_tokenizer(texts, vocab_size, "byte_bpe", tuple(special_tokens), min_frequency, split_digits=False)


def _ordered_special_tokens(special_tokens: Iterable[str]) -> tuple[str, ...]:
    """END_OF_TEXT, PAD, then the other special tokens in the order given, each once."""
    tokens = list(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ConfigError(f"special token {token!r} is not a non-empty string.")
    return tuple(dict.fromkeys([*DEFAULT_SPECIAL_TOKENS, *tokens]))


def _valid_texts(texts: Iterable[str], counts: Counter) -> Iterator[str]:
    """The texts with lone surrogates (which UTF-8 cannot encode) replaced, counting their characters."""
    for text in texts:
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        counts["characters"] += len(text)
        yield text


def _check_not_empty(counts: Counter) -> None:
    """Raise DataError if the texts held no character."""
    if not counts["characters"]:
        raise DataError("there is no text to train the tokenizer on: every training text is empty.")


def _train_byte_level_bpe(
    texts: Iterable[str],
    vocab_size: int,
    specials: tuple[str, ...],
    min_frequency: int,
    split_digits: bool,
    progress: bool,
) -> Tokenizer:
    """GPT-2's byte-level BPE: 256 byte symbols, then merges."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise DataError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE tokenizer needs at least "
            f"{len(alphabet) + len(specials)} ids for its 256 bytes and {len(specials)} special tokens."
        )
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    digits = pre_tokenizers.Digits(individual_digits=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level]) if split_digits else byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=alphabet,
        show_progress=progress,
    )
    counts = Counter()
    tokenizer.train_from_iterator(_valid_texts(texts, counts), trainer=trainer)
    _check_not_empty(counts)
    return tokenizer


def _sentencepiece_pre_tokenizer(split_digits: bool) -> pre_tokenizers.PreTokenizer:
    """Words with their leading space; "<0x" on its own, so no text can spell (and match) a byte piece; digits."""
    steps = [pre_tokenizers.Split(Regex(WORD_PATTERN), "isolated"), pre_tokenizers.Split("<0x", "isolated")]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    return pre_tokenizers.Sequence(steps)


def covered_characters(texts: Iterable[str], coverage: float, limit: int) -> str:
    """The most frequent characters that cover the given fraction of all characters, at most limit of them."""
    counts = Counter()
    for text in texts:
        counts.update(text)
    needed, covered, alphabet = coverage * sum(counts.values()), 0, []
    for character, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if covered >= needed or len(alphabet) == limit:
            break
        alphabet.append(character)
        covered += count
    return "".join(alphabet)


def _alphabet_segments(texts: Iterable[str], alphabet: str) -> Iterator[str]:
    """The pieces of the texts between characters outside the alphabet (those are left to byte fallback)."""
    outside = re.compile(f"[^{re.escape(alphabet)}]+")
    for text in texts:
        yield from filter(None, outside.split(text))


def _train_sentencepiece_style(
    texts: Iterable[str],
    vocab_size: int,
    kind: str,
    specials: tuple[str, ...],
    min_frequency: int,
    split_digits: bool,
    character_coverage: float,
    progress: bool,
) -> Tokenizer:
    """SentencePiece-style BPE or Unigram: characters, 256 byte-fallback pieces, learned pieces."""
    if not 0 < character_coverage <= 1:
        raise ConfigError(f"character_coverage {character_coverage} must be in (0, 1].")
    specials = tuple(dict.fromkeys([*specials, UNKNOWN]))
    reserved = len(specials) + len(BYTE_PIECES)
    if vocab_size <= reserved:
        raise DataError(
            f"vocab_size {vocab_size} is too small: a {kind} tokenizer needs more than {reserved} ids for its "
            f"256 byte pieces and {len(specials)} special tokens ({UNKNOWN} included)."
        )
    counts = Counter()
    texts = list(_valid_texts(texts, counts))
    _check_not_empty(counts)
    alphabet = covered_characters(texts, character_coverage, limit=vocab_size - reserved)
    pre_tokenizer = _sentencepiece_pre_tokenizer(split_digits)
    learner = Tokenizer(models.BPE() if kind == "bpe" else models.Unigram())
    learner.pre_tokenizer = pre_tokenizer
    learned_size = vocab_size - len(BYTE_PIECES)
    if kind == "bpe":
        trainer = trainers.BpeTrainer(
            vocab_size=learned_size, min_frequency=min_frequency, special_tokens=list(specials), show_progress=progress
        )
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=learned_size, special_tokens=list(specials), unk_token=UNKNOWN, show_progress=progress
        )
    learner.train_from_iterator(_alphabet_segments(texts, alphabet), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    if kind == "bpe":
        model = _bpe_with_byte_fallback(learned, specials)
    else:
        model = _unigram_with_byte_fallback(learned, specials, vocab_size - reserved)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(list(specials))
    return tokenizer


def _bpe_with_byte_fallback(learned: dict, specials: tuple[str, ...]) -> models.BPE:
    """The learned BPE model with the byte pieces placed after the special tokens."""
    pieces = sorted(learned["vocab"], key=learned["vocab"].__getitem__)
    pieces = [*specials, *BYTE_PIECES, *(piece for piece in pieces if piece not in specials)]
    merges = [tuple(merge) for merge in learned["merges"]]  # tokenizers >= 0.20 stores merges as pairs
    return models.BPE({piece: id for id, piece in enumerate(pieces)}, merges, unk_token=UNKNOWN, byte_fallback=True)


def _unigram_with_byte_fallback(learned: dict, specials: tuple[str, ...], size: int) -> models.Unigram:
    """The learned Unigram model, cut to size pieces (characters kept), after the special tokens and byte pieces."""
    scores = _deterministic_unigram_scores(dict(entry for entry in learned["vocab"] if entry[0] not in specials))
    pieces = list(scores.items())
    characters = [entry for entry in pieces if len(entry[0]) == 1]
    by_score = lambda entry: (-entry[1], entry[0])  # noqa: E731
    longer = sorted((entry for entry in pieces if len(entry[0]) > 1), key=by_score)[: size - len(characters)]
    vocab = [(token, 0.0) for token in (*specials, *BYTE_PIECES)] + sorted(characters + longer, key=by_score)
    return models.Unigram(vocab, unk_id=specials.index(UNKNOWN), byte_fallback=True)


def _deterministic_unigram_scores(scores: dict[str, float]) -> dict[str, float]:
    """Unigram training's scores made the same on every run.

    tokenizers' UnigramTrainer scores the characters that EM dropped lowest, lowest + 1e-4, ... in hash-set order
    (they are re-scored here in character order), and its sums vary in the last bits (rounded off here).
    """
    lowest = min(scores.values())
    steps = {piece: (score - lowest) / UNIGRAM_BACKFILL_STEP for piece, score in scores.items() if len(piece) == 1}
    backfilled = sorted(piece for piece, step in steps.items() if step < len(steps) and abs(step - round(step)) < 1e-6)
    scores.update((piece, lowest + index * UNIGRAM_BACKFILL_STEP) for index, piece in enumerate(backfilled))
    return {piece: round(score, SCORE_DECIMALS) for piece, score in scores.items()}


def decode_bytes(tokenizer: Tokenizer, ids: Iterable[int]) -> bytes:
    """The UTF-8 bytes that ids stand for, exact even where they end inside a character (for streaming output)."""
    special = {id: token.content for id, token in tokenizer.get_added_tokens_decoder().items()}
    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    pieces = []
    for id in ids:
        token = special.get(id)
        if token is not None:
            pieces.append(token.encode("utf-8"))
            continue
        token = tokenizer.id_to_token(id)
        if token is None:
            raise DataError(f"token id {id} is outside the tokenizer's vocabulary of {tokenizer.get_vocab_size()}.")
        if byte_level:
            pieces.append(bytes(_BYTE_OF_SYMBOL[symbol] for symbol in token))
        elif token in _BYTE_OF_PIECE:
            pieces.append(bytes([_BYTE_OF_PIECE[token]]))
        else:
            pieces.append(token.encode("utf-8"))
    return b"".join(pieces)


def _gpt2_byte_symbols() -> dict[str, int]:
    """GPT-2's map from its byte-level symbols back to bytes: printable bytes are themselves, the rest U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{chr(byte): byte for byte in printable}, **{chr(256 + n): byte for n, byte in enumerate(others)}}


_BYTE_OF_SYMBOL = _gpt2_byte_symbols()
_BYTE_OF_PIECE = {piece: byte for byte, piece in enumerate(BYTE_PIECES)}


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> str:
    """Write tokenizer.json into directory (a path or an fsspec URL; created if missing) atomically and return its
    path."""
    if is_remote(remote := location(directory)):
        with atomic_path(remote / TOKENIZER_FILE) as staging:
            staging.write_text(tokenizer.to_str(pretty=True))
        return str(remote / TOKENIZER_FILE)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"{directory} is a file, not a directory to write tokenizer.json into.")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOKENIZER_FILE)
    with atomic_writer(path) as stream:
        stream.write(tokenizer.to_str(pretty=True))
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a tokenizer.json file or a directory containing one (a path or an fsspec URL)."""
    place = location(path)
    if place.is_dir():
        place = place / TOKENIZER_FILE
    if not place.is_file():
        raise DataError(f"no tokenizer file was found at {place}.")
    try:
        return Tokenizer.from_str(place.read_text()) if is_remote(place) else Tokenizer.from_file(str(place))
    except Exception as error:
        raise DataError(f"{place} is not a valid tokenizer.json file: {error}.") from error
