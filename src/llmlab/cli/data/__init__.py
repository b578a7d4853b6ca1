"""`llmlab data STAGE ...`: the data pipeline's stages as commands.

Each module in this package whose name does not start with "_" is one stage: it defines
`register(subparsers)`, adding its parser and setting `handler`, like the top-level subcommands.
Adding a stage is adding a module here. Shared helpers for JSONL stages live in `_common`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def stage_modules() -> list[str]:
    """Names of the stage modules in this package, in alphabetical order."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommand group with every stage registered."""
    parser = subparsers.add_parser("data", help="data pipeline stages: filter, pii, decontaminate, langid, ...")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in stage_modules():
        importlib.import_module(f"{__name__}.{name}").register(stages)
