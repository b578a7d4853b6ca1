"""`llmlab merge ADAPTER OUT`: fold a LoRA adapter into its base and write the full merged checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the merge subcommand."""
    parser = subparsers.add_parser("merge", help="fold a LoRA adapter into its base and write a full checkpoint")
    parser.add_argument("adapter", metavar="ADAPTER", help="a PEFT LoRA adapter directory (adapter_config.json)")
    parser.add_argument("destination", metavar="OUT", help="the directory to write the merged checkpoint to")
    parser.add_argument("--to", choices=("llmlab", "hf"), default="llmlab", help="format of OUT (default: llmlab)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint files in an existing OUT (other files in it are kept)")
    parser.set_defaults(handler=run_merge)


def run_merge(arguments: argparse.Namespace) -> None:
    """Load ADAPTER on its base, merge, save OUT with the tokenizer, and say where it went."""
    from pathlib import Path

    from llmlab.adapt.lora import merge
    from llmlab.api import adapter_base, load, save
    from llmlab.errors import ConfigError
    from llmlab.model.checkpoint import check_output_directory

    adapter, out = Path(arguments.adapter), Path(arguments.destination)
    base = adapter_base(adapter)
    for source in (adapter, base):
        if out.resolve() == source.resolve():
            raise ConfigError(f"merge would write into its input {source}; choose another output directory.")
    check_output_directory(out, arguments.overwrite)  # before the slow load
    model = merge(load(adapter))
    save(model, out, format=arguments.to, overwrite=arguments.overwrite)
    print(f"merged {adapter} into its base {base}; wrote {out} ({arguments.to} format)")
