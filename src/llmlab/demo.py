"""The demo behind `make demo`: a small LLaMA-style model learns the bundled corpus on a CPU in a few minutes."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil
import time
from pathlib import Path

import torch

import llmlab
import llmlab.infer  # noqa: F401  (Model.generate's implementation)
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
SFT_TASKS = ("copy", "count_words", "upper", "lower")  # llmlab.adapt.synthetic tasks
SFT_EXAMPLES, SFT_HELD_OUT, SFT_STEPS, SFT_LR = 3000, 40, 200, 3e-3
SFT_WINDOW, SFT_BATCH = 256, 8  # examples packed into windows of SFT_WINDOW tokens, SFT_BATCH windows a step
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
        overwrite: bool = False, sft_steps: int = SFT_STEPS) -> list[float]:
    """Train the demo model on the bundled corpus, print samples before and after, save it, instruction-tune it
    (sft_steps) into out_dir-sft and print an evaluation table; return the pretraining losses.

    An existing non-empty out_dir (or out_dir-sft) is refused before any work unless overwrite, which replaces only
    the checkpoint in out_dir (and the demo's own out_dir-sft)."""
    check_output_directory(out_dir, overwrite)
    check_output_directory(sft_directory(out_dir), overwrite)
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
    held_out_loss = Trainer(model, recipe.train, batches, held_out=held_out, progress=False).evaluate()
    tuned = instruction_tune_and_show(out_dir, seed, overwrite, sft_steps)
    say("8. The trained models, evaluated (llmlab evaluate: docs/evaluation.md)")
    say(evaluation_table(held_out_loss, tuned))
    say(f"Done in {time.perf_counter() - started:.0f}s.")
    say(f"Serve it behind an OpenAI-compatible API, with a chat page at http://127.0.0.1:8000/: "
        f"llmlab serve {out_dir}  (or the instruction-tuned {tuned['final']}; needs the serve extra: "
        f"pip install -e '.[serve]')")
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


def sft_directory(out_dir: str) -> Path:
    """Where the demo instruction-tunes its model: out_dir-sft."""
    return Path(out_dir.rstrip(os.sep) + "-sft")


def instruction_tune_and_show(out_dir: str, seed: int, overwrite: bool, steps: int = SFT_STEPS) -> dict:
    """Fine-tune the saved demo model on synthetic instructions (llmlab finetune's sft method) into out_dir-sft,
    printing greedy answers to held-out instructions and their exact-match accuracy before and after."""
    from llmlab.adapt.data import FinetuneData
    from llmlab.adapt.finetune import FinetuneRecipe, ModelSection, finetune, method_section
    from llmlab.adapt.synthetic import generate_tasks, write_tasks

    sft_dir = sft_directory(out_dir)
    if sft_dir.exists() and overwrite:  # the demo's own run directory, as out_dir-run and out_dir-data are
        shutil.rmtree(sft_dir)
    sft_dir.mkdir(parents=True, exist_ok=True)
    data = write_tasks(sft_dir / "tasks.jsonl", SFT_EXAMPLES, seed=seed, tasks=SFT_TASKS)
    questions = generate_tasks(SFT_HELD_OUT, seed=seed + 1_000_003, tasks=SFT_TASKS)  # apart from the training draw
    recipe = FinetuneRecipe(
        model=ModelSection(path=out_dir),
        data=FinetuneData(path=str(data), format="alpaca", template="alpaca", held_out_fraction=0.02, seed=seed),
        method=method_section({"name": "sft", "pack": True, "seq_len": SFT_WINDOW, "batch_size": SFT_BATCH},
                              "the demo"),
        train=TrainConfig(steps=steps, lr=SFT_LR, schedule="cosine", warmup=min(10, steps), weight_decay=0.0,
                          grad_clip=1.0, eval_every=0, log_every=10, seed=seed, deterministic=True, device="cpu"),
    )
    say(f"6. Instruction tuning (survey §5.1): {SFT_EXAMPLES} synthetic tasks ({', '.join(SFT_TASKS)}) in Stanford "
        f"Alpaca's prompt; greedy answers to held-out ones before:")
    before = exact_match(llmlab.load(out_dir), questions)
    say(f"7. Fine-tuning for {steps} steps (packed, loss on the responses only), then the same questions:")
    final = finetune(recipe, sft_dir / "run", progress=True)
    after = exact_match(llmlab.load(final), questions)
    say(f"   Saved the instruction-tuned model to {final}")
    return {"before": before, "after": after, "final": str(final)}


def exact_match(model, questions: list[dict], shown: int = 4) -> float:
    """The share of questions (Alpaca records) whose greedy answer equals the output exactly, through
    llmlab.evaluate; prints the first `shown` answers."""
    from llmlab.adapt.templates import ALPACA_PROMPTS
    from llmlab.evaluate.evaluator import LocalModel, evaluate
    from llmlab.evaluate.tasks import GenerationOptions, Task

    bos = model.config.bos_token_id  # llmlab finetune starts every example with it; lm-eval's generation does not
    start = model.tokenizer.id_to_token(bos) if bos is not None else ""
    documents = [{"prompt": start + ALPACA_PROMPTS["prompt_input" if q["input"] else "prompt_no_input"].format(**q),
                  "output": q["output"]} for q in questions]
    task = Task(name="synthetic instructions", kind="generation", data=documents, template="{{prompt}}",
                target="output", metrics=("exact_match",), normalize={"strip": True},
                generation=GenerationOptions(max_new_tokens=24, until=("\n",), temperature=0.0))
    result = evaluate(LocalModel(model), [task])
    for question, record in zip(questions[:shown], result["samples"][task.name]):
        asked = f"{question['instruction']} {question['input']}".strip()
        say(f"  > {asked!r} -> {record['outputs'][0].strip()!r} (expected {question['output']!r})")
    accuracy = result["results"][task.name]["metrics"]["exact_match"]["value"]
    say(f"   exact match {accuracy:.2f} on {len(questions)} held-out questions")
    return accuracy


def evaluation_table(held_out_loss: float, tuned: dict) -> str:
    """A small markdown table: held-out perplexity of the pretrained model, and the synthetic task before and
    after instruction tuning."""
    rows = [("| model | task | metric | value |", "|---|---|---|---|"),
            (f"| demo (pretrained) | bundled corpus, held out | perplexity | {math.exp(held_out_loss):.1f} |",
             f"| demo (pretrained) | {SFT_HELD_OUT} synthetic instructions | exact match | {tuned['before']:.2f} |",
             f"| demo-sft (instruction-tuned) | {SFT_HELD_OUT} synthetic instructions | exact match | "
             f"{tuned['after']:.2f} |")]
    return "\n".join(line for group in rows for line in group)
