"""`llmlab presets [NAME]`: every preset (or one family) with its sizes, shapes and parameter counts."""

from __future__ import annotations

import argparse

COLUMNS = ("preset", "size", "parameters", "layers", "d_model", "heads", "arch")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the presets subcommand."""
    parser = subparsers.add_parser("presets", help="list the model presets, their sizes and parameter counts")
    parser.add_argument("name", nargs="?", metavar="NAME", help="one preset family (default: all of them)")
    parser.set_defaults(handler=run_presets)


def human_count(count: int) -> str:
    """A parameter count the way papers write it: 124.4M, 6.74B, 812.5K."""
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.1f}K"


def preset_rows(names: list[str]) -> list[dict]:
    """One row per preset size: its shape and parameter count (tied weights once), built on the meta device."""
    import torch

    from llmlab.model import Model, presets

    rows = []
    for name in names:
        for size in presets.sizes(name):
            config = presets.get(name, size)
            with torch.device("meta"):
                count = Model(config).num_parameters()
            rows.append({"preset": name, "size": size, "parameters": count, "layers": config.n_layers,
                         "d_model": config.d_model, "heads": config.n_heads, "arch": config.arch})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a left-aligned text table under a header."""
    cells = [list(COLUMNS)] + [[human_count(row[c]) if c == "parameters" else str(row[c]) for c in COLUMNS]
                               for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def run_presets(arguments: argparse.Namespace) -> None:
    """Print the table of every preset, or of the one named."""
    from llmlab.model import presets

    names = presets.names() if arguments.name is None else [arguments.name]  # an unknown name: ConfigError
    print(format_table(preset_rows(names)))
