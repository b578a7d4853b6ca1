"""The demo behind `make demo`: a small LLaMA-style model learns the bundled corpus on a CPU in a few minutes."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import time
from pathlib import Path

import torch

import llmlab
from llmlab.data.mixture import Mixture
from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import recipe_from_dict
from llmlab.data.pipeline_report import report_markdown
from llmlab.data.shards import TokenShards
from llmlab.data.tokenizer import END_OF_TEXT
from llmlab.model import Model
from llmlab.model.checkpoint import check_output_directory
from llmlab.objectives import causal_lm
from llmlab.train.data import StepBatches, held_out_batches, open_sources, shard_tokenizer
from llmlab.train.loop import METRICS_FILE, TENSORBOARD_DIRECTORY, TrainConfig, Trainer
from llmlab.train.pretrain import build_model
from llmlab.train.recipe import DataConfig, Recipe

CURVES_FILE = "curves.png"
PROMPTS = ("Return the", "This module provides", "Raises ValueError if", "The default")
# The same run as recipes/demo.yaml (`llmlab pretrain recipes/demo.yaml --out DIR`), which a test keeps equal.
RECIPE = Recipe(
    model=dict(preset="llama", size="tiny", d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=688,
               max_seq_len=256, tie_embeddings=True),
    data=DataConfig(source="bundled", vocab_size=4096, seq_len=128, batch_size=8, held_out_fraction=0.05, seed=0),
    train=TrainConfig(steps=250, lr=1.5e-3, schedule="cosine", warmup=20, min_lr_ratio=0.1, weight_decay=0.1,
                      grad_clip=1.0, eval_every=50, eval_batches=8, seed=0, device="cpu"),
)
VOCAB_SIZE = RECIPE.data.vocab_size
# The same pipeline as recipes/data/demo.yaml (`llmlab data run recipes/data/demo.yaml`), which a test keeps equal.
DATA_RECIPE = recipe_from_dict({
    "sources": [{"path": "bundled"}],
    "stages": [{"filter": {"rules": "gopher-repetition,fineweb"}}, "pii", {"dedup": {"near": True}}],
    "tokenizer": {"train": {"kind": "byte_bpe", "vocab_size": VOCAB_SIZE, "objective": "causal"}},
    "shards": {"tokens_per_shard": 1_000_000},
    "workers": 2,
    "output": os.path.join("runs", "demo-data"),
}, where="the demo's data recipe")


def say(text: str) -> None:
    """Print a line at once, so that it lands in order with the progress bar on stderr."""
    print(text, flush=True)


@torch.no_grad()
def print_samples(model, tokenizer, generator: torch.Generator, max_new_tokens: int = 40) -> None:
    """Print one sampled continuation of each demo prompt, cut at the first <|endoftext|>."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    was_training = model.training
    model.eval()
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([[end_of_text, *tokenizer.encode(prompt).ids]])
        output = model.generate(
            prompt_ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40, generator=generator
        )
        continuation = output[0, prompt_ids.shape[1] :].tolist()
        if end_of_text in continuation:
            continuation = continuation[: continuation.index(end_of_text)]
        text = prompt + tokenizer.decode(continuation)
        say(f"  > {text!r}")
    model.train(was_training)


def run(steps: int = RECIPE.train.steps, out_dir: str = os.path.join("runs", "demo"), seed: int = 0,
        overwrite: bool = False) -> list[float]:
    """Train the demo model on the bundled corpus, print samples before and after, save it; return the losses.

    An existing non-empty out_dir is refused before any work unless overwrite, which replaces only its checkpoint."""
    check_output_directory(out_dir, overwrite)
    started = time.perf_counter()
    data = dataclasses.replace(RECIPE.data, seed=seed)
    recipe = dataclasses.replace(RECIPE, data=data, train=dataclasses.replace(RECIPE.train, steps=steps, seed=seed))
    data_dir, run_dir = out_dir.rstrip(os.sep) + "-data", Path(out_dir.rstrip(os.sep) + "-run")
    say("1. The bundled corpus (docstrings of the Python standard library) through the data pipeline: quality rules,")
    say(f"   PII scrubbing, exact and near-duplicate removal, a {data.vocab_size}-token byte-level BPE tokenizer, "
        f"token shards in {data_dir}")
    report = run_pipeline(DATA_RECIPE, data_dir)
    say(report_markdown(report))

    say("2. The token shards, cut into windows for training and held-out evaluation")
    shards = TokenShards(os.path.join(data_dir, "shards"))
    tokenizer = shard_tokenizer(shards)
    sources = open_sources(dataclasses.replace(data, source=str(shards.directory)))
    train_split = Mixture(sources, data.seq_len, seed, data.held_out_fraction)
    held_out_split = Mixture(sources, data.seq_len, seed, data.held_out_fraction, split="held_out")
    say(f"   {len(train_split) * data.seq_len} training tokens, {len(held_out_split) * data.seq_len} held-out tokens")
    model = build_model(recipe, tokenizer, shards)
    held_out = held_out_batches(held_out_split, causal_lm, recipe.train.eval_batches, data.batch_size, seed)
    batches = StepBatches(train_split, causal_lm, data.batch_size, seed)
    losses = train_and_show(model, tokenizer, recipe, batches, held_out, seed, run_dir)
    save_model(model, tokenizer, out_dir, overwrite)
    plot_curves(run_dir)
    say(f"Done in {time.perf_counter() - started:.0f}s.")
    say(f"Serve it behind an OpenAI-compatible API, with a chat page at http://127.0.0.1:8000/: "
        f"llmlab serve {out_dir}  (needs the serve extra: pip install -e '.[serve]')")
    return losses


def train_and_show(model: Model, tokenizer, recipe: Recipe, batches: StepBatches, held_out: list[dict],
                   seed: int, run_dir: Path) -> list[float]:
    """Print samples and the held-out loss, train (logging to run_dir), and print them again; return the losses."""
    data, steps = recipe.data, recipe.train.steps
    clear_logs(run_dir)
    trainer = Trainer(model, recipe.train, batches, held_out=held_out, run_dir=run_dir, description="demo")
    say(f"3. A LLaMA-style model with {model.num_parameters() / 1e6:.1f}M parameters; samples before training:")
    sampling_generator = torch.Generator().manual_seed(seed)
    print_samples(model, tokenizer, sampling_generator)
    say(f"   held-out loss {trainer.evaluate():.3f}")

    say(f"4. Training for {steps} steps of {data.batch_size}x{data.seq_len} tokens")
    losses = trainer.fit()
    say(f"   training loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10 steps)")
    say(f"   held-out loss {trainer.evaluate():.3f}")

    say("5. Samples after training:")
    print_samples(model, tokenizer, sampling_generator)
    return losses


def save_model(model: Model, tokenizer, out_dir: str, overwrite: bool) -> None:
    """Save the model as an llmlab checkpoint with its tokenizer.json in out_dir."""
    model.tokenizer = tokenizer
    llmlab.save(model, out_dir, overwrite=overwrite)
    say(f"Saved the model and tokenizer to {out_dir}; load it with llmlab.load({out_dir!r})")


def clear_logs(run_dir: Path) -> None:
    """Remove the metrics, TensorBoard events and curves an earlier demo left in run_dir, so that runs do not mix."""
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    (run_dir / CURVES_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIRECTORY, ignore_errors=True)


def plot_curves(run_dir: Path) -> None:
    """Draw the run's training curves into run_dir when matplotlib is installed, and say where they went."""
    if importlib.util.find_spec("matplotlib") is None:
        say(f"Training metrics are in {run_dir / METRICS_FILE}; pip install 'llmlab[plot]' to draw them too.")
        return
    from llmlab.train.plot import plot_runs

    plot_runs([run_dir], run_dir / CURVES_FILE, overwrite=True)
    say(f"Saved the training curves to {run_dir / CURVES_FILE} (llmlab plot {run_dir} OTHER_RUN... to compare)")
