"""The training loop: AdamW, linear warmup then cosine decay, gradient clipping, a progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from llmlab.train.schedules import warmup_cosine


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms' gains or other vectors), fused where supported."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


@contextlib.contextmanager
def _global_rng_seeded_from(generator: torch.Generator | None, device: torch.device):
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def train(
    model: nn.Module,
    batches: Iterable[dict],
    steps: int,
    lr: float,
    warmup: int = 0,
    *,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train model for steps optimiser steps on batches (dicts of model keyword arguments) and return the loss of each step.

    With a generator, the model's own randomness (dropout) is drawn from it, so a run is reproducible
    and the global random state is left untouched.
    """
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, lr, weight_decay, betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=warmup, total=steps, min_ratio=min_lr_ratio)
    )
    was_training = model.training
    model.train()
    losses: list[float] = []
    batch_iterator = iter(batches)
    with _global_rng_seeded_from(generator, device), tqdm(total=steps, desc=description, disable=not progress) as bar:
        for step in range(steps):
            batch = {name: value.to(device) for name, value in next(batch_iterator).items()}
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{step_lr:.2e}", refresh=False)
            bar.update()
            if on_step is not None:
                on_step(step, losses[-1])
    model.train(was_training)
    return losses
