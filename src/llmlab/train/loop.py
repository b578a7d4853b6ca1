"""The training loop: optimiser, schedule, mixed precision, accumulation, clipping, spike skipping, evaluation,
metrics and checkpoints, in one process or many (DDP or FSDP2 under torchrun, see distributed.py). Everything that
trains in llmlab goes through Trainer.fit."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from llmlab.errors import ConfigError
from llmlab.objectives.losses import LossFunction, language_model_loss
from llmlab.scaling.estimate import training_flops_per_token
from llmlab.train import distributed
from llmlab.train.checkpoint import (
    latest_checkpoint, load_checkpoint, save_checkpoint, save_model, save_sharded_checkpoint,
)  # fmt: skip
from llmlab.train.optim import OPTIMIZERS, build_optimizer
from llmlab.train.schedules import SCHEDULES
from llmlab.train.stability import SpikeGuard

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SPIKE_ACTIONS = ("skip", "rollback")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIRECTORY = "tensorboard"
CHECKPOINTS_DIRECTORY = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the `train:` section of a recipe."""

    steps: int = 100
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    precision: str = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    z_loss: float = 0.0
    spike_factor: float | None = None
    spike_window: int = 100
    on_spike: str = "skip"  # or "rollback": reload the newest checkpoint and go on past the offending batches
    eval_every: int = 0
    sample_every: int = 0  # print and log a greedy continuation of sample_prompt every this many steps
    sample_prompt: str = "The"
    sample_tokens: int = 32
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 0
    keep_last: int = 3  # 0 keeps every checkpoint
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto": the GPU when there is one, else the CPU
    peak_flops: float | None = None  # the device's peak FLOP/s (e.g. 989e12 for an H100 in bf16), for MFU
    parallel: str = "none"  # under torchrun: "ddp" (replicas) or "fsdp" (FSDP2 shards); a single process ignores it
    reduce_precision: str = "fp32"  # fsdp: the dtype gradients are reduced in (parameters compute in `precision`)

    def __post_init__(self):
        choices = {"schedule": SCHEDULES, "optimizer": OPTIMIZERS, "precision": PRECISIONS, "on_spike": SPIKE_ACTIONS,
                   "parallel": distributed.PARALLEL_MODES, "reduce_precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} is {getattr(self, name)!r}; choose one of {', '.join(allowed)}.")
        for name in ("steps", "grad_accum", "log_every", "eval_batches", "spike_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, not {getattr(self, name)}.")
        for name in ("warmup", "eval_every", "sample_every", "sample_tokens", "checkpoint_every", "keep_last",
                     "weight_decay", "z_loss"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, not {getattr(self, name)}.")
        try:
            torch.device(self.resolved_device())
        except RuntimeError:
            message = f"train.device {self.device!r} is not a device torch knows (e.g. cpu, cuda, cuda:1)."
            raise ConfigError(message) from None
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, not {self.lr}.")

    def resolved_device(self) -> str:
        """The device to train on, with "auto" resolved."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def param_dtype(self) -> torch.dtype | None:
        """The dtype FSDP2 casts parameters to for computing (None: as stored, float32)."""
        return PRECISIONS[self.precision]

    @property
    def reduce_dtype(self) -> torch.dtype:
        """The dtype FSDP2 reduces gradients in."""
        return PRECISIONS[self.reduce_precision] or torch.float32



def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass instead of storing them."""
    from llmlab.model.transformer import Block

    for module in model.modules():
        if isinstance(module, Block):
            module.forward = partial(checkpoint, module.forward, use_reentrant=False)


class MetricsLog:
    """Appends one JSON object per record to run_dir/metrics.jsonl, and to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self.file = run_dir / METRICS_FILE if run_dir is not None else None
        self.board = None
        self.board_tried = False

    def _open_board(self) -> None:
        """Start TensorBoard's writer at the first record (so that a run refused at its start writes nothing)."""
        if not self.board_tried and self.run_dir is not None:
            self.board_tried = True
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(self.run_dir / TENSORBOARD_DIRECTORY))

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after step (those a killed run logged past its last checkpoint)."""
        if self.file is None or not self.file.exists():
            return
        kept = [line for line in self.file.read_text().splitlines() if self._step_of(line) <= step]
        staging = self.file.with_suffix(".tmp")
        staging.write_text("".join(line + "\n" for line in kept))
        staging.replace(self.file)

    @staticmethod
    def _step_of(line: str) -> float:
        """The step of a JSONL record; a line cut short by a kill counts as past every step."""
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return math.inf

    def write(self, record: dict) -> None:
        """Record one step's metrics."""
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        self._open_board()
        if self.board is not None:
            for name, value in record.items():
                if isinstance(value, str):
                    self.board.add_text(name, value, record["step"])
                elif name != "step" and value is not None:
                    self.board.add_scalar(name, value, record["step"])

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.board is not None:
            self.board.close()
            self.board, self.board_tried = None, False


class Trainer:
    """Trains model on batches (an iterator of dicts of tensors) as config says, minimising loss_fn.

    loss_fn(model, batch) returns (summed loss, token count, metrics) (llmlab.objectives.losses; by default the
    language-model loss of every pretraining objective, with config.z_loss). Each step's gradient is that of the summed
    loss over the whole global batch divided by its token count, so every token weighs the same however the batch
    falls into micro-batches and ranks.

    With a run_dir, metrics go to run_dir/metrics.jsonl and checkpoints to run_dir/checkpoints/step-N; for
    checkpoints the batches must have state_dict/load_state_dict (their position is saved with the rest).
    Randomness inside the model (dropout) comes from the global generator seeded from config.seed inside
    Trainer.fit only: the caller's global random state is left as it was.

    When a process group is up (distributed.setup under torchrun) the model is wrapped per config.parallel, batches
    must yield this rank's rows (distributed.RankRows), metrics, samples and the progress bar come from rank 0 only,
    and checkpoints are sharded (torch.distributed.checkpoint). Every rank must call fit, save_checkpoint,
    state_dict, resume and save_model: they are collective.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, batches: Iterator[dict], *,
                 held_out: list[dict] | None = None, run_dir: str | Path | None = None,
                 tokenizer_file: str | Path | None = None, progress: bool = True, description: str = "train",
                 on_step: Callable[[int, float], None] | None = None,
                 sampler: Callable[[nn.Module], str] | None = None, loss_fn: LossFunction | None = None):
        self.model, self.config, self.batches, self.held_out = model, config, batches, held_out
        self.loss_fn = loss_fn or partial(language_model_loss, z_loss_weight=config.z_loss)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tokenizer_file, self.progress, self.description = tokenizer_file, progress, description
        self.on_step, self.sampler = on_step, sampler
        self.device = next(model.parameters()).device
        if config.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.parallel_model = distributed.parallelize(model, config)  # model itself, its DDP wrapper, or sharded
        self.sharded_checkpoints = distributed.is_distributed()
        self.is_main = distributed.is_main()
        self.optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, config.betas)
        multiplier = partial(SCHEDULES[config.schedule], warmup=config.warmup, total=config.steps,
                             min_ratio=config.min_lr_ratio, decay_fraction=config.decay_fraction)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, multiplier)
        # FSDP2 computes in config.param_dtype through its MixedPrecisionPolicy, the other modes through autocast
        self.autocast_dtype = None if distributed.is_sharded(model) else PRECISIONS[config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.guard = SpikeGuard(config.spike_factor, config.spike_window)
        self.forward = torch.compile(self.parallel_model) if config.compile else self.parallel_model
        self.metrics = MetricsLog(self.run_dir if self.is_main else None)
        self.step = 0
        self.skipped = {"non-finite": 0, "spike": 0}
        self.rollbacks = 0
        self.rng_states: dict | None = None
        self.losses: list[float] = []

    def state_dict(self) -> dict:
        """Everything besides the weights that a bit-exact resume needs; with sharded checkpoints the optimiser is
        left out (it is saved with the shards) and "rng" lists every rank's states (gathered: collective)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "step": self.step, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None, "guard": self.guard.state_dict(),
            "skipped": dict(self.skipped), "rollbacks": self.rollbacks, "rng": rng,
            "batches": self.batches.state_dict(),
        }  # fmt: skip
        if self.sharded_checkpoints:
            del state["optimizer"]
            state["rng"] = distributed.gather(rng)
        return state

    def _restore_optimisation(self, state: dict) -> None:
        self.step = int(state["step"])
        if "optimizer" not in state:
            pass  # a sharded checkpoint's optimiser state was read with its weights (load_checkpoint)
        elif distributed.is_sharded(self.model):
            distributed.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.guard.load_state_dict(state["guard"])

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state saved by state_dict (the weights are loaded separately)."""
        self._restore_optimisation(state)
        self.skipped = dict(state["skipped"])
        self.rollbacks = int(state.get("rollbacks", 0))
        rng = state["rng"]  # one dict, or one per rank of the run that saved it (a new rank takes rank 0's)
        if isinstance(rng, list):
            rng = rng[distributed.rank() if distributed.rank() < len(rng) else 0]
        self.rng_states = rng
        self.batches.load_state_dict(state["batches"])
        self.metrics.truncate_after(self.step)

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory of either format: weights, optimiser state and the rest."""
        self.load_state_dict(load_checkpoint(path, self.model, self.optimizer))

    def roll_back(self) -> int | None:
        """Reload the newest checkpoint's weights and optimiser state but keep the data position, so that the
        batches since then are skipped (the OPT logbook's remedy); returns the step rolled back to, or None."""
        latest = latest_checkpoint(self.run_dir / CHECKPOINTS_DIRECTORY) if self.run_dir is not None else None
        if latest is None:
            return None
        self._restore_optimisation(load_checkpoint(latest, self.model, self.optimizer))
        self.rollbacks += 1
        return self.step

    def _restore_rng(self) -> None:
        if self.rng_states is None:
            torch.manual_seed(self.config.seed)
            return
        torch.set_rng_state(self.rng_states["cpu"])
        if "cuda" in self.rng_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng_states["cuda"])

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        with self._autocast():
            return self.loss_fn(self.forward, batch)

    def _next_batch(self) -> dict:
        return {name: value.to(self.device) for name, value in next(self.batches).items()}

    def train_step(self) -> dict:
        """One optimiser step over grad_accum micro-batches on every rank (skipped on a bad loss); returns its metrics.

        The step's loss is the mean over every labelled position of the global batch (all micro-batches of all
        ranks), as one process with the whole batch computes it: each micro-batch's mean loss is weighted by its
        share of the labelled positions, times the world size, since DDP and FSDP average gradients over ranks.
        Micro-batches with uneven label counts (padding, span corruption, MLM) therefore weigh by their labels, not
        equally. The loss logged is that global mean; tokens/s counts every rank's tokens.
        """
        config, started = self.config, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = [self._next_batch() for _ in range(config.grad_accum)]
        world = distributed.world_size()
        summed_losses, counts, metric_sums = [], [], {}
        for index, batch in enumerate(micro_batches):
            with distributed.gradient_sync(self.parallel_model, enabled=index == len(micro_batches) - 1):
                summed, count, metrics = self._loss(batch)
                (self.scaler.scale(summed) if self.scaler is not None else summed).backward()
            summed_losses.append(summed.detach())
            counts.append(count)
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + (value.detach() if torch.is_tensor(value) else value)
        tokens = sum(batch["input_ids"].numel() for batch in micro_batches)
        names = sorted(metric_sums)  # every rank's loss function reports the same metrics
        loss_sum, total_count, tokens, *metric_values = distributed.all_reduce_sum(
            [float(sum(summed_losses)), float(sum(counts)), tokens, *(float(metric_sums[name]) for name in names)],
            self.device)
        loss_sum = loss_sum / total_count if total_count else math.nan
        # a loss function's metrics are sums over its labelled positions, as its loss: logged as their means
        means = {name: value / total_count if total_count else math.nan for name, value in zip(names, metric_values)}
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
        if gradients and total_count:  # data-parallel wrappers average over ranks: back to the global mean
            torch._foreach_mul_(gradients, world / total_count)
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        grad_norm = float(distributed.as_full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                                    max_norm)))
        reason = self.guard.reason_to_skip(loss_sum)
        if reason is None and self.scaler is None and not math.isfinite(grad_norm):
            reason = "non-finite"
        if reason is None:
            self.guard.accept(loss_sum)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        else:
            self.skipped[reason] += 1
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        step_time = time.perf_counter() - started
        record = {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens / step_time, "step_time_s": step_time,
                  "skipped_steps": sum(self.skipped.values()), "rollbacks": self.rollbacks,
                  **{name: value for name, value in means.items() if name != "loss"}}  # fmt: skip
        if config.peak_flops and hasattr(self.model, "config"):
            model_config = self.model.config
            flops = training_flops_per_token(sum(p.numel() for p in self.model.parameters()), model_config.n_layers,
                                             model_config.d_model, batch["input_ids"].shape[-1])  # fmt: skip
            record["mfu"] = flops * tokens / step_time / (config.peak_flops * world)
        if self.device.type == "cuda":
            record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if reason is not None and config.on_spike == "rollback":
            record["rolled_back_to"] = self.roll_back()
        return record

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the held-out batches, with dropout off; distributed, each batch's loss is the mean over all
        ranks' labelled positions, as one process holding the whole batch computes it."""
        self.model.eval()
        sums = []  # per batch: summed loss, labelled positions
        for batch in self.held_out:
            summed, count, _ = self._loss({name: value.to(self.device) for name, value in batch.items()})
            sums += [float(summed), float(count)]
        self.model.train()
        totals = distributed.all_reduce_sum(sums, self.device)
        losses = [total / count if count else math.nan for total, count in zip(totals[::2], totals[1::2])]
        return sum(losses) / len(losses)

    @torch.no_grad()
    def write_sample(self, bar: tqdm) -> None:
        """Log (and show above the progress bar) the sampler's text for the model as it is now; every rank samples
        (a sharded model needs them all), rank 0 writes."""
        self.model.eval()
        sharded = distributed.is_sharded(self.model)
        if sharded:
            self.model.unshard()  # the root's weights, which calls other than forward (encode) need too
        text = self.sampler(self.model)
        if sharded:
            self.model.reshard()
        self.model.train()
        self.metrics.write({"step": self.step, "sample": text})
        self.show(bar, f"step {self.step}: {text!r}")

    def show(self, bar: tqdm, line: str) -> None:
        """Print a line above the progress bar (rank 0, with progress on)."""
        if self.progress and self.is_main:
            bar.write(line)

    def save_checkpoint(self) -> Path:
        """Write run_dir/checkpoints/step-N with the model, tokenizer and training state (sharded when distributed)."""
        directory = self.run_dir / CHECKPOINTS_DIRECTORY
        if self.sharded_checkpoints:
            return save_sharded_checkpoint(directory, self.step, self.model, self.optimizer, self.state_dict(),
                                           self.tokenizer_file, self.config.keep_last)  # fmt: skip
        return save_checkpoint(directory, self.step, self.model, self.state_dict(), self.tokenizer_file,
                               self.config.keep_last)

    def save_model(self, path: str | os.PathLike) -> Path:
        """Write the model as it is now (whole, even when sharded) to an llmlab checkpoint directory for llmlab.load."""
        return save_model(self.model, path, self.tokenizer_file, {"step": self.step})

    def fit(self) -> list[float]:
        """Train until config.steps (from wherever a loaded state left off); return this call's step losses."""
        config, was_training = self.config, self.model.training
        self.model.train()
        cuda_devices = [self.device] if self.device.type == "cuda" else []
        bar = tqdm(total=config.steps, initial=self.step, desc=self.description,
                   disable=not (self.progress and self.is_main))
        shown = {}  # the progress bar's postfix: the step's loss and lr, the latest eval loss
        with torch.random.fork_rng(devices=cuda_devices), bar:
            self._restore_rng()
            while self.step < config.steps:
                record = self.train_step()
                self.losses.append(record["loss"])
                shown.update(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self.metrics.write(record)
                if self.held_out and config.eval_every and self.step % config.eval_every == 0:
                    eval_loss = self.evaluate()
                    self.metrics.write({"step": self.step, "eval_loss": eval_loss})
                    self.show(bar, f"step {self.step}: eval loss {eval_loss:.3f}")
                    shown["eval_loss"] = f"{eval_loss:.3f}"
                bar.set_postfix(shown, refresh=False)
                bar.update()
                if self.sampler is not None and config.sample_every and self.step % config.sample_every == 0:
                    self.write_sample(bar)
                if self.run_dir is not None and config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.on_step is not None:
                    self.on_step(record["step"] - 1, record["loss"])
        self.metrics.close()
        self.model.train(was_training)
        return self.losses


def train(model: nn.Module, batches: Iterator[dict], config: TrainConfig | None = None, **options) -> list[float]:
    """Train model on batches with a Trainer and return the loss of each step; options go to Trainer."""
    return Trainer(model, config or TrainConfig(), batches, **options).fit()

