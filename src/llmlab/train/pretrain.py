"""`llmlab pretrain`: a recipe's model trained on its data into DIR, with checkpoints to resume from."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from llmlab.data.corpus import bundled_documents
from llmlab.data.tokenizer import END_OF_TEXT, PAD, TOKENIZER_FILE, load_tokenizer, train_bpe_tokenizer
from llmlab.errors import CheckpointError, ConfigError, DataError
from llmlab.model.checkpoint import save_llmlab
from llmlab.model.transformer import Model
from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint, remove_stale_temporaries
from llmlab.train.data import RandomWindows, fixed_batches, read_token_file, split_held_out, tokenize_documents
from llmlab.train.loop import CHECKPOINTS_DIRECTORY, METRICS_FILE, Trainer
from llmlab.train.recipe import Recipe

FINAL_DIRECTORY = "final"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """Run the body with torch.use_deterministic_algorithms(enabled) and restore the setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def prepare_tokens(recipe: Recipe, tokenizer_file: Path | None):
    """The tokenizer (or None) and the token stream; for the bundled corpus, tokenizer_file's or a newly trained one."""
    data = recipe.data
    if data.source != "bundled":
        tokenizer = load_tokenizer(data.tokenizer) if data.tokenizer else None
        return tokenizer, read_token_file(data.source)
    texts = [document["text"] for document in bundled_documents(data.max_chars)]
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file else train_bpe_tokenizer(texts, data.vocab_size)
    return tokenizer, tokenize_documents(tokenizer, texts)


def save_tokenizer_atomically(tokenizer, path: Path) -> Path:
    """Write tokenizer.json to path through a temporary file, so that a killed run never leaves half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    tokenizer.save(str(staging))
    os.replace(staging, path)
    return path


def build_model(recipe: Recipe, tokenizer, tokens: torch.Tensor) -> Model:
    """The recipe's model, sized to the tokenizer's vocabulary, initialised from train.seed."""
    fields = {}
    if tokenizer is not None:
        end_of_text = tokenizer.token_to_id(END_OF_TEXT)
        fields = {"vocab_size": tokenizer.get_vocab_size(), "pad_token_id": tokenizer.token_to_id(PAD)}
        if end_of_text is not None:
            fields.update(bos_token_id=end_of_text, eos_token_id=end_of_text)
    config = recipe.model_config(**fields)
    largest = int(tokens.max())
    if largest >= config.vocab_size:
        raise DataError(f"{recipe.data.source} holds token id {largest}, "
                        f"beyond the model's vocab_size {config.vocab_size}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        return Model(config).to(recipe.train.resolved_device())


def greedy_sampler(tokenizer, prompt: str, max_new_tokens: int):
    """A function of a model giving prompt plus its greedy continuation (None for models that cannot generate)."""

    def sample(model: Model) -> str:
        start = [model.config.bos_token_id] if model.config.bos_token_id is not None else []
        ids = torch.tensor([start + tokenizer.encode(prompt).ids], device=model.device)
        output = model.generate(ids, max_new_tokens=max_new_tokens)
        new = output[0, ids.shape[1]:] if model.config.arch != "encoder_decoder" else output[0, 1:]
        return prompt + tokenizer.decode(new.tolist())

    return sample


def pretrain(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True) -> Path:
    """Train the recipe's model into out_dir (checkpoints/step-N, metrics.jsonl, final/); return the final directory.

    With resume, training continues from the newest complete checkpoint (from scratch when there is none);
    without, out_dir must not already hold a run.
    """
    run_dir = Path(out_dir)
    checkpoints = run_dir / CHECKPOINTS_DIRECTORY
    latest = latest_checkpoint(checkpoints) if resume else None
    if not resume and any(path.exists() for path in (checkpoints, run_dir / FINAL_DIRECTORY, run_dir / METRICS_FILE)):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out.")
    if recipe.data.source != "bundled" and not Path(recipe.data.source).is_file():
        raise DataError(f"the recipe's data.source {recipe.data.source} does not exist.")
    checkpoint_tokenizer = latest / TOKENIZER_FILE if latest is not None else None
    tokenizer, tokens = prepare_tokens(recipe, checkpoint_tokenizer if recipe.data.source == "bundled" else None)
    model = build_model(recipe, tokenizer, tokens)
    data = recipe.data
    train_tokens, held_out_tokens = split_held_out(tokens, data.held_out_fraction)
    batches = RandomWindows(train_tokens, data.batch_size, data.seq_len, data.seed)
    held_out = None
    if recipe.train.eval_every and held_out_tokens.numel() >= data.seq_len:
        held_out = fixed_batches(held_out_tokens, recipe.train.eval_batches, data.batch_size, data.seq_len, data.seed)
    sampler = None
    if tokenizer is not None and model.config.arch != "encoder":
        sampler = greedy_sampler(tokenizer, recipe.train.sample_prompt, recipe.train.sample_tokens)
    trainer = Trainer(model, recipe.train, batches, held_out=held_out, run_dir=run_dir, progress=progress,
                      description="pretrain", sampler=sampler)
    if resume and latest is None:
        trainer.metrics.truncate_after(0)  # a run killed before its first checkpoint starts over
    if latest is not None:
        state = load_checkpoint(latest, model)
        try:
            trainer.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"{latest} does not fit the recipe's training setup ({error}).") from None
        remove_stale_temporaries(checkpoints)
        remove_stale_temporaries(run_dir, FINAL_DIRECTORY)
    if recipe.data.source != "bundled":
        trainer.tokenizer_file = Path(data.tokenizer) if data.tokenizer else None
    elif latest is None or not (run_dir / TOKENIZER_FILE).exists():
        trainer.tokenizer_file = save_tokenizer_atomically(tokenizer, run_dir / TOKENIZER_FILE)
    else:
        trainer.tokenizer_file = run_dir / TOKENIZER_FILE
    with deterministic_algorithms(recipe.train.deterministic):
        trainer.fit()
    return save_llmlab(model, run_dir / FINAL_DIRECTORY, tokenizer_file=trainer.tokenizer_file,
                       metadata={"step": trainer.step})
