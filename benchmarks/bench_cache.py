"""Key/value caches side by side: greedy generation through dynamic, static, ragged and paged caches, and one decode
step's cache work (write one token a row, return the keys/values attention sees, every layer) alone and with the
attention over what the cache returns (SDPA, one query a row, no mask: a static cache attends over its whole capacity,
the ragged one row by row over each row's own keys).

Each configuration runs in ROUNDS interleaved rounds (the order rotates each round, so a load change hits all alike);
the table gives the median time and the ratio to the dynamic cache.

    OMP_NUM_THREADS=2 python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --device cuda --batch 32 --context 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmlab.infer.cache import DynamicCache, RaggedCache, StaticCache
from llmlab.infer.generate import generate_ids
from llmlab.infer.paged import PagedCache
from llmlab.model import Model, presets
from llmlab.model.attention import BACKENDS

KINDS = ("dynamic", "static", "ragged", "paged")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - start


def generation(args) -> dict[str, list[float]]:
    """Seconds per generate_ids call for each cache kind."""
    torch.manual_seed(0)
    model = Model(presets.get("llama", "tiny", max_seq_len=args.prompt + args.new)).eval().to(args.device)
    ids = torch.randint(3, 1000, (args.batch, args.prompt), device=args.device)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for round_ in range(args.rounds + 1):
        order = KINDS[round_ % len(KINDS):] + KINDS[:round_ % len(KINDS)]
        for kind in order:
            seconds = timed(lambda: generate_ids(model, ids, None, args.new, ignore_eos=True, cache=kind), args.device)
            if round_:  # the first round warms up
                times[kind].append(seconds)
    return times


def decode_step(args, attend: bool) -> dict[str, list[float]]:
    """Seconds per decode step's cache work (update in every layer, then advance) at a context of args.context, with
    the attention of one query a row over the returned keys when attend."""
    layers, heads, dim, batch, context = 8, 8, 64, args.batch, args.context
    shape = (batch, heads, context, dim)
    new = torch.randn(batch, heads, 1, dim, device=args.device)
    dynamic = DynamicCache(layers)
    dynamic.keys = [torch.randn(shape, device=args.device) for _ in range(layers)]
    dynamic.values = [torch.randn(shape, device=args.device) for _ in range(layers)]
    static = StaticCache(layers, batch, heads, dim, context + args.steps + 1, device=args.device)
    static.lengths += context
    paged = PagedCache(layers, heads, dim, batch * -(-(context + args.steps + 1) // 16), 16, device=args.device)
    for row in range(batch):
        paged.add_sequence(row)
    paged.set_batch(range(batch))
    paged.slots(context, torch.device(args.device))  # blocks for the context
    paged.advance(context)
    ragged = RaggedCache(layers, [context + args.steps + 1] * batch, heads, dim, device=args.device)
    for store in (ragged.keys, ragged.values):
        for tensor in store:
            tensor.normal_()
    ragged.row_lengths = [context] * batch
    caches = {"dynamic": dynamic, "static": static, "ragged": ragged, "paged": paged}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def steps(cache):
        for _ in range(args.steps):
            slots, _ = cache.slots(1, torch.device(args.device))
            for layer in range(layers):
                keys, values = cache.update(layer, slots, new, new)
                if attend:  # the model's dense backend: one SDPA call, or one a row for the ragged cache's lists
                    BACKENDS["sdpa"].attend(new, keys, values, (None, False), None, 0.0)
            cache.advance(1)

    for round_ in range(args.rounds + 1):
        order = KINDS[round_ % len(KINDS):] + KINDS[:round_ % len(KINDS)]
        for kind in order:
            if kind == "dynamic":  # keep its length fixed: drop the appended tokens again
                dynamic.keys = [k[:, :, :context] for k in dynamic.keys]
                dynamic.values = [v[:, :, :context] for v in dynamic.values]
            seconds = timed(lambda: steps(caches[kind]), args.device) / args.steps
            if kind == "static":
                static.lengths -= args.steps
            if kind == "ragged":
                ragged.row_lengths = [context] * batch
            if kind == "paged":
                for row in range(batch):
                    paged.lengths[row] -= args.steps
            if round_:
                times[kind].append(seconds)
    return times


def main() -> None:
    """Run both measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"device={args.device} ({where}) batch={args.batch} rounds={args.rounds}")
    print(f"{'measurement':<46} {'cache':<8} {'median ms':>10} {'× dynamic':>10}")
    rows = [(f"generate llama-tiny, {args.prompt} prompt + {args.new} new", generation(args)),
            (f"decode-step cache work, 8 layers, context {args.context}", decode_step(args, False)),
            ("  the same + attention", decode_step(args, True))]
    for title, times in rows:
        base = statistics.median(times["dynamic"])
        for kind in KINDS:
            median = statistics.median(times[kind])
            print(f"{title:<46} {kind:<8} {median * 1e3:>10.2f} {median / base:>10.2f}")


if __name__ == "__main__":
    main()
