"""Supervised fine-tuning throughput and peak memory: llmlab's sft method through its Trainer against TRL's
SFTTrainer on transformers' model, on the same weights, tokens and settings, packed and padded, full and LoRA.

The model is the demo's LLaMA (d_model 256, 4 layers, 4 heads, SwiGLU d_ff 688, tied embeddings, a 4096-token
byte-level BPE trained on the bundled corpus; random weights), written once with llmlab.save(format="hf") so that
llmlab.load and AutoModelForCausalLM.from_pretrained read the same weights. The data are synthetic instruction tasks
(llmlab.adapt.synthetic) in Stanford Alpaca's template, encoded once by llmlab's Encoder: TRL gets those very ids with
a completion_mask (completion_only_loss=True), so both train on the same tokens and the same labels (the reply and its
EOS only).

Four configurations on each side:
- packed: llmlab's best-fit-decreasing windows of seq_len with document masks; TRL's packing=True (its "bfd"
  strategy, which turns on padding-free batches: a step's rows flattened into one sequence, documents kept apart by
  position_ids);
- padded: one example per row, right-padded to the batch's longest (llmlab's method.pack: false; TRL's packing=False),
  and for reference TRL's padding_free=True without packing (the step's examples flattened into one sequence);
- full fine-tuning or LoRA (r 8, alpha 16, no dropout, on q, k, v and o: llmlab.adapt.lora; PEFT's LoraConfig).
Both: AdamW (fused where it exists), lr 1e-4, betas (0.9, 0.95), weight decay 0, clipping at 1.0, no warm-up, a
constant schedule, no activation checkpointing (TRL's default turns it on; here it is off, as llmlab's), fp32 on CPU and
bf16 autocast on a GPU, no evaluation, no saving, no logging.

Each configuration runs in a fresh subprocess (so that peaks do not mix): a few warm-up steps, then the timed steps.
Reported: trained tokens/s (the non-padding tokens of the timed steps over their wall time) and tokens per CPU-second
(over the process's CPU time instead: steadier on a shared machine), the share of padding in the batches, the mean
loss of the timed steps, and peak memory: on CPU the process's peak resident set (getrusage's ru_maxrss, imports
included) and its growth over the resident set just before the model is loaded (every module the run needs already
imported); on a GPU torch.cuda.max_memory_allocated. Ratios are llmlab / TRL; with --repeats, rates are medians and
their ratios the medians of each round's pair.

    python benchmarks/bench_sft.py                  # 2 warm-up + 5 timed steps per configuration, batch 8 × 256
    python benchmarks/bench_sft.py --repeats 2      # each configuration twice, the implementations' order swapped
    python benchmarks/bench_sft.py --quick          # 1 + 2 steps, the packed and padded full fine-tuning only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGURATIONS = {  # name: (packed, LoRA)
    "packed full": (True, False), "padded full": (False, False),
    "packed LoRA": (True, True), "padded LoRA": (False, True),
}
IMPLEMENTATIONS = ("llmlab", "trl", "trl-padding-free")  # the last for padded configurations only
NAMES = {"llmlab": "llmlab", "trl": "TRL", "trl-padding-free": "TRL padding_free"}
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0}
LORA_TARGETS = ("q", "k", "v", "o")  # llmlab's attention projections; Hugging Face's q_proj, k_proj, v_proj, o_proj
MODEL = {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 4, "d_ff": 688, "max_seq_len": 256,
         "tie_embeddings": True}  # recipes/demo.yaml's model
VOCAB_SIZE = 4096
LR, BETAS = 1e-4, (0.9, 0.95)
RESULT = "RESULT "  # the prefix of a worker's one line of results


def implementations(configuration: str) -> tuple[str, ...]:
    """What runs a configuration: llmlab, TRL and, when padded, TRL padding-free."""
    return IMPLEMENTATIONS if not CONFIGURATIONS[configuration][0] else IMPLEMENTATIONS[:2]


# --- the shared model and data ----------------------------------------------------------------------------------------

def prepare(directory: Path, examples: int, seed: int) -> None:
    """Write the HF model (model/), the Alpaca records (records.json) and their ids and labels (encoded.json)."""
    import torch

    import llmlab
    from llmlab.adapt.synthetic import generate_tasks
    from llmlab.adapt.templates import Encoder, load_template
    from llmlab.data.corpus import bundled_documents
    from llmlab.data.tokenizer import END_OF_TEXT, PAD, train_tokenizer
    from llmlab.model import Model, presets

    tokenizer = train_tokenizer([document["text"] for document in bundled_documents()], VOCAB_SIZE)
    eos, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(PAD)
    torch.manual_seed(seed)
    model = Model(presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), bos_token_id=eos, eos_token_id=eos,
                                pad_token_id=pad, **MODEL))
    model.tokenizer = tokenizer
    llmlab.save(model, directory / "model", format="hf")
    records = [{"prompt": {"instruction": task["instruction"], "input": task["input"]}, "response": task["output"]}
               for task in generate_tasks(examples, seed=seed)]
    encoder = Encoder(tokenizer, load_template("alpaca", tokenizer, eos), eos, eos)
    encoded = [encoder.encode(record["prompt"], record["response"]) for record in records]
    (directory / "records.json").write_text(json.dumps(records))
    (directory / "encoded.json").write_text(json.dumps(encoded))


# --- measuring inside a worker ----------------------------------------------------------------------------------------

def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Steps:
    """Per step: its end time and its non-padding and total token counts, for tokens/s after the warm-up."""

    def __init__(self, pad_id: int):
        self.pad_id, self.ends, self.cpu, self.tokens, self.positions, self.losses = pad_id, [], [], [], [], []
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def batch(self, input_ids) -> None:
        """Count a step's batch."""
        self.tokens.append(int((input_ids != self.pad_id).sum()))
        self.positions.append(input_ids.numel())

    def end(self, loss: float) -> None:
        """Mark the end of a step."""
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.losses.append(loss)

    def summary(self, warmup: int) -> dict:
        """tokens per second of wall and of CPU time, padding share and mean loss over the steps after warmup."""
        seconds = self.ends[-1] - (self.ends[warmup - 1] if warmup else self.started)
        cpu_seconds = self.cpu[-1] - (self.cpu[warmup - 1] if warmup else self.cpu_started)
        tokens, positions = sum(self.tokens[warmup:]), sum(self.positions[warmup:])
        timed = self.losses[warmup:]
        return {"tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu_seconds, "tokens": tokens,
                "seconds": seconds, "padding": 1 - tokens / positions, "loss": sum(timed) / len(timed),
                "steps": len(timed)}


def memory_report(device: str, baseline: int) -> dict:
    """Peak memory: the GPU's max_memory_allocated, or the process's peak resident set and its growth over baseline."""
    import torch

    if device.startswith("cuda"):
        return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30, "growth_gib": None}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_gib": peak / 2**30, "growth_gib": (peak - baseline) / 2**30}


def counted(batches, steps: Steps):
    """batches, each counted by steps as it is drawn."""
    for batch in batches:
        steps.batch(batch["input_ids"])
        yield batch


def run_llmlab(directory: Path, packed: bool, lora: bool, args) -> dict:
    """The sft method (llmlab.adapt.sft.build: tokenising, packing or padding) and the Trainer, as llmlab finetune."""
    import torch

    import llmlab
    import llmlab.api  # noqa: F401  (llmlab.load's modules, imported before the baseline)
    from llmlab.adapt import lora as lora_module
    from llmlab.adapt import sft
    from llmlab.adapt.method import FinetuneContext
    from llmlab.adapt.templates import Encoder, load_template
    from llmlab.train.loop import Trainer, TrainConfig

    if lora:
        import peft  # noqa: F401  (llmlab's LoRA layers are PEFT's: imported before the baseline, as TRL's modules)
    baseline = resident_bytes()
    train = TrainConfig(steps=args.warmup + args.steps, lr=LR, schedule="constant", warmup=0, weight_decay=0.0,
                        betas=BETAS, grad_clip=1.0, precision=args.precision, device=args.device, log_every=10**9)
    model = llmlab.load(directory / "model", device=torch.device(args.device))
    config = model.config
    if lora:
        lora_module.apply_lora(model, lora_module.LoraConfig(target=LORA_TARGETS, **LORA))
    records = json.loads((directory / "records.json").read_text())
    encoder = Encoder(model.tokenizer, load_template("alpaca", model.tokenizer, config.eos_token_id),
                      config.eos_token_id, config.bos_token_id)
    context = FinetuneContext(model=model, tokenizer=model.tokenizer, examples=records, held_out=[],
                              params={**sft.PARAMETERS, "pack": packed, "seq_len": args.seq_len,
                                      "batch_size": args.batch},
                              encode=encoder.encode, encode_prompt=encoder.encode_prompt, train=train,
                              run_dir=directory, device=torch.device(args.device), seed=0)
    parts = sft.build(context)
    steps = Steps(config.pad_token_id)
    trainer = Trainer(model, train, counted(parts.batches, steps), progress=False, loss_fn=parts.loss_fn)
    trainer.model.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(train.steps):
            record = trainer.train_step()
            synchronise(args.device)
            steps.end(record["loss"])
    return {**steps.summary(args.warmup), **memory_report(args.device, baseline)}


def run_trl(directory: Path, packed: bool, lora: bool, args, padding_free: bool = False) -> dict:
    """TRL's SFTTrainer on AutoModelForCausalLM from the HF export, on the same ids with completion-only loss."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    baseline = resident_bytes()
    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    steps = Steps(tokenizer.pad_token_id)
    encoded = json.loads((directory / "encoded.json").read_text())
    data = datasets.Dataset.from_list([{"input_ids": ids, "completion_mask": [int(label != -100) for label in labels]}
                                       for ids, labels in encoded])
    model = AutoModelForCausalLM.from_pretrained(directory / "model", attn_implementation="sdpa",
                                                 dtype=torch.float32)
    cuda = args.device.startswith("cuda")
    config = SFTConfig(
        output_dir=str(directory / "trl"), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, packing=packed, padding_free=padding_free,
        max_length=None if padding_free else args.seq_len,  # TRL refuses one unpacked; no example is longer anyway
        completion_only_loss=True, gradient_checkpointing=False, bf16=args.precision == "bf16" and cuda,
        use_cpu=not cuda, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**9,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    peft_config = None
    if lora:
        import peft

        peft_config = peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                      target_modules=[f"{name}_proj" for name in LORA_TARGETS], task_type="CAUSAL_LM")

    last_loss = [float("nan")]

    class Timed(SFTTrainer):
        def training_step(self, model, inputs, *rest, **options):
            steps.batch(inputs["input_ids"])
            loss = super().training_step(model, inputs, *rest, **options)
            last_loss[0] = float(loss)
            return loss

    class StepEnds(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            synchronise(args.device)
            steps.end(last_loss[0])

    trainer = Timed(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                    peft_config=peft_config, callbacks=[StepEnds()])
    trainer.train()
    return {**steps.summary(args.warmup), **memory_report(args.device, baseline)}


def synchronise(device: str) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args) -> None:
    """Run one configuration of one implementation and print its results as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    packed, lora = CONFIGURATIONS[args.configuration]
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    directory = Path(args.directory)
    if args.worker == "llmlab":
        result = run_llmlab(directory, packed, lora, args)
    else:
        result = run_trl(directory, packed, lora, args, padding_free=args.worker == "trl-padding-free")
    print(RESULT + json.dumps(result), flush=True)


# --- the parent: one subprocess per configuration, the table ----------------------------------------------------------

def measure(directory: Path, implementation: str, configuration: str, args) -> dict:
    """One worker's results (or the reason it failed)."""
    command = [sys.executable, __file__, "--worker", implementation, "--configuration", configuration,
               "--directory", str(directory), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(lines[-1][len(RESULT):])


def median(values: list[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def combine(runs: list[dict]) -> dict:
    """One implementation's repeats of a configuration: median rates and loss, the largest peaks."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    combined = {key: median([run[key] for run in runs]) for key in ("tokens_per_s", "tokens_per_cpu_s", "padding",
                                                                    "loss")}
    for key in ("peak_gib", "growth_gib"):
        combined[key] = None if runs[0][key] is None else max(run[key] for run in runs)
    return combined


def print_table(results: dict, cuda: bool) -> None:
    """The markdown table: per configuration, llmlab's row and each TRL row with llmlab's ratios against it
    (tokens/s: the median of the rounds' paired ratios; peak: of the largest peaks)."""
    memory = "peak GPU GiB" if cuda else "peak RSS GiB (growth)"
    print(f"| configuration | implementation | tokens/s | tokens/CPU-s | padding | mean loss | {memory} | "
          "llmlab / this: tokens/s | tokens/CPU-s | peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for configuration, runs in results.items():
        rows = {implementation: combine(found) for implementation, found in runs.items()}
        ours = rows["llmlab"]
        for implementation, row in rows.items():
            if "error" in row:
                print(f"| {configuration} | {NAMES[implementation]} | failed: {row['error']} | | | | | | | |")
                continue
            peak = f"{row['peak_gib']:.3f}" + (f" ({row['growth_gib']:.3f})" if row["growth_gib"] is not None else "")
            ratios = "| | | |"
            if implementation != "llmlab" and "error" not in ours:
                pairs = list(zip(runs["llmlab"], runs[implementation]))
                paired = {key: median([mine[key] / theirs[key] for mine, theirs in pairs])
                          for key in ("tokens_per_s", "tokens_per_cpu_s")}
                ratios = (f"| **{paired['tokens_per_s']:.2f}** | {paired['tokens_per_cpu_s']:.2f} | "
                          f"**{ours['peak_gib'] / row['peak_gib']:.2f}** |")
            print(f"| {configuration} | {NAMES[implementation]} | {row['tokens_per_s']:.0f} | "
                  f"{row['tokens_per_cpu_s']:.0f} | {row['padding']:.0%} | {row['loss']:.3f} | {peak} {ratios}")


def main() -> None:
    """Prepare the model and data, run every configuration of both in its own subprocess, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--seq-len", type=int, default=256, help="the packing window and longest example")
    parser.add_argument("--examples", type=int, default=1000, help="synthetic instruction examples")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every configuration, the implementations' order reversed each round")
    parser.add_argument("--configurations", default=None,
                        help=f"comma-separated, of: {', '.join(CONFIGURATIONS)} (default all)")
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, full fine-tuning only")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--configuration", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.threads = args.threads or torch.get_num_threads()
    args.steps = args.steps or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.worker:
        worker(args)
        return
    names = args.configurations.split(",") if args.configurations else (
        ["packed full", "padded full"] if args.quick else list(CONFIGURATIONS))
    unknown = [name for name in names if name not in CONFIGURATIONS]
    if unknown:
        parser.error(f"--configurations: unknown {unknown[0]!r}; choose from {', '.join(CONFIGURATIONS)}")
    import peft
    import transformers
    import trl

    where = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    print(f"device={args.device} ({where}) precision={args.precision} torch={torch.__version__} "
          f"transformers={transformers.__version__} trl={trl.__version__} peft={peft.__version__}")
    print(f"batch {args.batch} rows, seq_len {args.seq_len}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.examples} synthetic Alpaca examples, {args.repeats} round(s); "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    results = {name: {implementation: [] for implementation in implementations(name)} for name in names}
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        prepare(directory, args.examples, seed=0)
        for round_ in range(args.repeats):
            for name in names:
                order = implementations(name)
                for implementation in order if round_ % 2 == 0 else order[::-1]:
                    results[name][implementation].append(measure(directory, implementation, name, args))
                    print(f"  round {round_ + 1} {name} {implementation}: "
                          f"{json.dumps(results[name][implementation][-1])}", file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print_table(results, cuda)


if __name__ == "__main__":
    main()
