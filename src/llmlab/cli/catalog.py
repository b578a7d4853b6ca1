"""`llmlab catalog [--open] [--family F] [--format md|json]`: the surveys' models with their computed columns."""

from __future__ import annotations

import argparse
import json

FORMATS = ("md", "json")
COLUMNS = (  # (header, row key, formatter name)
    ("model", "model", "text"), ("size", "size", "text"), ("org", "organisation", "text"), ("date", "date", "text"),
    ("open", "open_weights", "open"), ("preset", "preset", "text"), ("published", "parameters_published", "count"),
    ("preset params", "parameters", "count"), ("Δ", "deviation", "percent"), ("tokens", "tokens", "count"),
    ("tokens/param", "tokens_per_parameter", "ratio"), ("Chinchilla 20:1", "chinchilla_tokens", "count"),
    ("6ND FLOPs", "compute_6nd", "flops"), ("+attention", "compute_with_attention", "flops"),
    ("weights bf16", "weights_bytes_bf16", "bytes"), ("KV/token bf16", "kv_cache_bytes_per_token_bf16", "bytes"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the catalog subcommand."""
    parser = subparsers.add_parser("catalog", help="the surveys' models, linked to presets, with computed columns")
    parser.add_argument("--open", action="store_true", help="only models whose weights were released")
    parser.add_argument("--family", metavar="F", help="one family tag or preset name (e.g. llama, t5, gpt3)")
    parser.add_argument("--format", choices=FORMATS, default="md", help="a markdown table (default) or JSON")
    parser.set_defaults(handler=run_catalog)


def human(value, kind: str) -> str:
    """A cell: counts as 6.74B, FLOPs as 4.0e22, bytes as GiB/MiB/KiB, deviations as +0.6%."""
    if value is None:
        return ""
    if kind == "open":
        return "yes" if value else "no"
    if kind == "count":
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:g}"
    if kind == "percent":
        return f"{value * 100:+.1f}%"
    if kind == "ratio":
        return f"{value:.1f}"
    if kind == "flops":
        return f"{value:.2e}"
    if kind == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:g} B"
    return str(value)


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, reasons for large deviations as footnotes."""
    lines = ["| " + " | ".join(header for header, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    notes = []
    for row in rows:
        cells = [human(row[key], kind) for _, key, kind in COLUMNS]
        if row["reason"]:
            notes.append(row["reason"])
            cells[8] += f" [{len(notes)}]"
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines.append("")
    lines.append("Computed on the meta device from each preset; Chinchilla tokens by the 20:1 rule; +attention is "
                 "(6N + 12·L·d·T)·D at the preset's context T; KV/token is keys and values of every decoder layer.")
    lines += [f"[{index}] {note}" for index, note in enumerate(notes, 1)]
    return "\n".join(lines)


def run_catalog(arguments: argparse.Namespace) -> None:
    """Print the catalogue, filtered by --open and --family."""
    from llmlab import catalog

    rows = catalog.rows(open_only=arguments.open, family=arguments.family)
    print(json.dumps(rows, indent=2, ensure_ascii=False) if arguments.format == "json" else markdown(rows))
