"""`llmlab pretrain`: a recipe's model trained on its data into DIR, with checkpoints to resume from."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from llmlab.data.mixture import Mixture
from llmlab.data.shards import TokenShards
from llmlab.data.tokenizer import (DEFAULT_SPECIAL_TOKENS, END_OF_PIECE, END_OF_TEXT, GENERATION_MASK, MASK, PAD,
                                   SENTENCE_MASK, START_OF_PIECE, UL2_MODE_TOKENS, objective_special_tokens)
from llmlab.errors import CheckpointError, ConfigError, DataError, LlmlabError
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Model
from llmlab.objectives import causal_lm
from llmlab.train import distributed
from llmlab.train.checkpoint import checkpoint_steps, remove_stale_temporaries, save_model
from llmlab.train.data import (BUNDLED, StepBatches, bundled_shards, held_out_batches, open_sources, shard_tokenizer,
                               with_repeated_subset)
from llmlab.train.loop import CHECKPOINTS_DIRECTORY, METRICS_FILE, Trainer
from llmlab.train.recipe import OBJECTIVES, Recipe

FINAL_DIRECTORY = "final"
DATA_DIRECTORY = "data"  # the bundled corpus's tokenizer and shards, inside the run directory
GLM_MASKS = {"token": MASK, "sentence": SENTENCE_MASK, "document": GENERATION_MASK}
SENTENCE_ENDS = (".", "?", "!")


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """Run the body with torch.use_deterministic_algorithms(enabled) and restore the setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def data_model_fields(recipe: Recipe, tokenizer, shards: TokenShards) -> dict:
    """The ModelConfig fields the data decides: the tokenizer's vocabulary (or the shards') and its special tokens."""
    if tokenizer is not None:
        fields = {"vocab_size": tokenizer.get_vocab_size(), "pad_token_id": tokenizer.token_to_id(PAD)}
        end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    else:
        fields, end_of_text = {"vocab_size": recipe.model.get("vocab_size", shards.vocab_size)}, shards.eos_token_id
    if end_of_text is not None:
        fields.update(bos_token_id=end_of_text, eos_token_id=end_of_text)
    return fields


def build_model(recipe: Recipe, tokenizer, shards: TokenShards) -> Model:
    """The recipe's model, sized to the tokenizer's vocabulary (or the shards'), initialised from train.seed."""
    fields = data_model_fields(recipe, tokenizer, shards)
    config = recipe.model_config(**fields)
    if config.arch == "encoder_decoder" and config.pad_token_id is not None:
        config = recipe.model_config(**fields, decoder_start_token_id=config.pad_token_id)
    if shards.vocab_size > config.vocab_size:
        raise DataError(f"{shards.directory} holds token ids up to {shards.vocab_size - 1}, "
                        f"beyond the model's vocab_size {config.vocab_size}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.train.seed)
        return Model(config).to(recipe.train.resolved_device())


def check_objective_fits(name: str, parameters: dict, config: ModelConfig) -> bool:
    """Raise ConfigError naming both when the objective cannot train this architecture; return decoder_only
    (whether span corruption / UL2 batches are recast for a decoder)."""
    arch, position = config.arch, config.position
    decoders = ("decoder", "prefix_decoder")
    decoder_only = parameters.get("decoder_only", arch in decoders)
    if name == "glm" or position == "glm2d":
        fits = name == "glm" and position == "glm2d"
        needs = "the GLM position scheme (model.position glm2d) and objective glm together"
    elif name == "mlm" or arch == "encoder":
        fits, needs = name == "mlm" and arch == "encoder", "an encoder (model.arch encoder) and objective mlm together"
    elif name in ("span_corruption", "ul2"):
        fits = arch in decoders if decoder_only else arch == "encoder_decoder"
        needs = "an encoder-decoder, or a decoder with decoder_only: true"
    else:
        fits, needs = arch in decoders, "a decoder or prefix decoder"
    if not fits:
        raise ConfigError(f"the {name} objective cannot train model.arch {arch} with model.position {position}: "
                          f"it needs {needs}.")
    return decoder_only


def build_objective(recipe: Recipe, tokenizer, config: ModelConfig):
    """The recipe's objective with its special-token ids from the tokenizer, checked against the architecture."""
    name = recipe.objective_name
    parameters = {key: value for key, value in recipe.objective.items() if key != "name"}
    decoder_only = check_objective_fits(name, parameters, config)
    if name == "causal":
        return causal_lm
    if tokenizer is None and name != "prefix_lm":
        raise ConfigError(f"the {name} objective needs the special tokens of a tokenizer.json beside the shards.")

    def token_id(token: str) -> int:
        found = tokenizer.token_to_id(token)
        if found is None:
            raise DataError(f"the tokenizer has no {token} token, which the {name} objective needs; retokenize with "
                            f"the objective's special tokens.")
        return found

    pad = config.pad_token_id if config.pad_token_id is not None else 0
    sentinels = lambda: tuple(map(token_id, objective_special_tokens("span_corruption")))  # noqa: E731
    supplied = {
        "prefix_lm": lambda: {},
        "span_corruption": lambda: dict(eos_token_id=config.eos_token_id, sentinel_ids=sentinels(), pad_token_id=pad,
                                        decoder_only=decoder_only),
        "ul2": lambda: dict(eos_token_id=config.eos_token_id, sentinel_ids=sentinels(), pad_token_id=pad,
                            mode_token_ids={mode: token_id(token) for mode, token in UL2_MODE_TOKENS.items()},
                            decoder_only=decoder_only),
        "glm": lambda: dict(mask_token_id=token_id(GLM_MASKS.get(parameters.get("unit", "token"), MASK)),
                            sop_token_id=token_id(START_OF_PIECE), eop_token_id=token_id(END_OF_PIECE),
                            pad_token_id=pad, sentence_end_ids=tuple(
                                found for end in SENTENCE_ENDS if (found := tokenizer.token_to_id(end)) is not None)),
        "mlm": lambda: dict(mask_token_id=token_id(MASK), vocab_size=config.vocab_size, special_token_ids=tuple(
            token_id(token) for token in (*DEFAULT_SPECIAL_TOKENS, *objective_special_tokens(name)))),
    }[name]()
    try:
        return OBJECTIVES[name](**{**parameters, **supplied})
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"the recipe's objective section does not fit the {name} objective ({error}).") from None


def greedy_sampler(tokenizer, prompt: str, max_new_tokens: int):
    """A function of a model giving prompt plus its greedy continuation (None for models that cannot generate)."""

    import llmlab.infer  # noqa: F401  (Model.generate's implementation)

    def sample(model: Model) -> str:
        start = [model.config.bos_token_id] if model.config.bos_token_id is not None else []
        ids = torch.tensor([start + tokenizer.encode(prompt).ids], device=model.device)
        output = model.generate(ids, max_new_tokens=max_new_tokens)
        new = output[0, ids.shape[1]:] if model.config.arch != "encoder_decoder" else output[0, 1:]
        return prompt + tokenizer.decode(new.tolist())

    return sample


def pretrain(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
             on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train the recipe's model into out_dir (checkpoints/step-N, metrics.jsonl, final/); return the final directory.

    With resume, training continues from the newest complete checkpoint (from scratch when there is none);
    without, out_dir must not already hold a run. on_step(step index, loss) is called after every step.
    """
    run_dir = Path(out_dir)
    final = run_dir / FINAL_DIRECTORY
    latest = check_run_directory(run_dir, resume, recipe.train.steps)
    data = recipe.data
    check_objective_fits(recipe.objective_name, recipe.objective, recipe.model_config())  # before writing data
    if data.source == BUNDLED:
        shards = bundled_run_data(run_dir / DATA_DIRECTORY, recipe, progress)
        sources = open_sources(dataclasses.replace(data, source=str(shards.directory)))
    else:
        sources = open_sources(data)
    sources = with_repeated_subset(sources, data)
    first = sources[0].stream
    tokenizer = shard_tokenizer(first)
    model = build_model(recipe, tokenizer, first)
    objective = build_objective(recipe, tokenizer, model.config)
    ranks = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    mixture = Mixture(sources, data.seq_len, data.seed, data.held_out_fraction)
    batches = StepBatches(mixture, objective, data.batch_size, data.seed, **ranks)
    held_out = None
    if recipe.train.eval_every:
        held_out_mixture = Mixture(sources, data.seq_len, data.seed, data.held_out_fraction, split="held_out")
        held_out = held_out_batches(held_out_mixture, objective, recipe.train.eval_batches, data.batch_size,
                                    data.seed, **ranks) or None
    sampler = None
    if tokenizer is not None and model.config.arch != "encoder" and model.config.position != "glm2d":
        sampler = greedy_sampler(tokenizer, recipe.train.sample_prompt, recipe.train.sample_tokens)
    trainer = Trainer(model, recipe.train, batches, held_out=held_out, run_dir=run_dir, progress=progress,
                      description="pretrain", sampler=sampler, tokenizer_file=first.tokenizer_file,
                      on_step=on_step)
    resume_trainer(trainer, latest, resume, run_dir)
    with deterministic_algorithms(recipe.train.deterministic):
        trainer.fit()
    say_replacing_final(final, trainer.step)
    return save_model(trainer.model, final, first.tokenizer_file, {"step": trainer.step}, overwrite=True)


def check_run_directory(run_dir: Path, resume: bool, steps: int) -> Path | None:
    """The newest complete checkpoint to resume from (None: start afresh); refuses an --out that is a file, one that
    already holds a run without resume, and a checkpoint past steps."""
    checkpoints = run_dir / CHECKPOINTS_DIRECTORY
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory; choose another --out.")
    if not resume and any(path.exists() for path in (checkpoints, run_dir / FINAL_DIRECTORY, run_dir / METRICS_FILE)):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out.")
    found = checkpoint_steps(checkpoints) if resume else []
    latest = found[-1][1] if found else None
    if found and found[-1][0] > steps:
        raise ConfigError(f"the newest checkpoint {latest} is past the requested train.steps={steps}; "
                          f"ask for at least {found[-1][0]} steps or choose another --out.")
    return latest


def resume_trainer(trainer: Trainer, latest: Path | None, resume: bool, run_dir: Path) -> None:
    """Continue trainer from the checkpoint latest (when there is one) and clear what a killed run left behind."""
    if resume and latest is None:
        trainer.metrics.truncate_after(0)  # a run killed before its first checkpoint starts over
    if latest is not None:
        try:
            trainer.resume(latest)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"{latest} does not fit the recipe's training setup ({error}).") from None
        remove_stale_temporaries(run_dir / CHECKPOINTS_DIRECTORY)
        remove_stale_temporaries(run_dir, FINAL_DIRECTORY)


def say_replacing_final(final: Path, step: int) -> None:
    """Say on stderr that final/ (the run's own) is replaced, when it is."""
    if final.exists() and distributed.is_main():
        print(f"replacing {final} with the model at step {step}", file=sys.stderr)


def bundled_run_data(directory: Path, recipe: Recipe, progress: bool) -> TokenShards:
    """The run's bundled-corpus shards (with the objective's special tokens), built once by rank 0 and reused."""
    failure = None
    if distributed.is_main():
        try:
            bundled_shards(directory, recipe.data.vocab_size, recipe.data.max_chars,
                           objective_special_tokens(recipe.objective_name), progress=progress)
        except LlmlabError as error:
            failure = error
    failure = distributed.broadcast(failure)
    if failure is not None:
        raise failure
    return TokenShards(directory)
