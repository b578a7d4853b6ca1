"""Many pretraining runs in one directory (a scaling sweep, an experiment's variants): each an ordinary run directory,
trained unless finished, resumed from its newest checkpoint otherwise; the directory's plan guards against mixing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from llmlab.errors import ConfigError, DataError
from llmlab.train.recipe import Recipe


def write_text(path: Path, text: str) -> None:
    """Write text to path atomically."""
    from llmlab.data.shards import atomic_path

    with atomic_path(path) as staging:
        staging.write_text(text)


def check_out_directory(out: Path, plan_file: str, key: str, value) -> None:
    """Refuse an out that is a file, a non-empty directory without plan_file, or one whose plan_file's key differs
    from value (another recipe or experiment)."""
    from llmlab.files import read_json_object

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory of runs; choose another --out.")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / plan_file).is_file():
        raise ConfigError(f"--out {out} already holds files but no {plan_file}; choose a new or empty directory.")
    if read_json_object(out / plan_file, DataError).get(key) != json.loads(json.dumps(value)):
        raise ConfigError(f"--out {out} holds runs of another {key} ({out / plan_file}); rerun it with the same "
                          f"{key} and overrides to resume it, or choose another --out.")


def is_finished(run_dir: Path) -> bool:
    """Whether a run directory holds its final model."""
    from llmlab.train.pretrain import FINAL_DIRECTORY

    return (run_dir / FINAL_DIRECTORY / "llmlab.json").is_file()


def train_unless_finished(recipe: Recipe, run_dir: Path, on_step: Callable[[int, float], None] | None = None) -> bool:
    """Train run_dir to its final model (resuming from its newest checkpoint) unless it has one; whether it trained."""
    from llmlab.train.pretrain import pretrain

    if is_finished(run_dir):
        return False
    pretrain(recipe, run_dir, resume=True, progress=False, on_step=on_step)
    return True


def shared_data(recipe: Recipe, directory: Path, progress: bool) -> tuple[str, int]:
    """The data source every run of a directory reads (the bundled corpus tokenized once into directory, or the
    recipe's shard directory) and its vocabulary size."""
    import dataclasses

    from llmlab.data.tokenizer import objective_special_tokens
    from llmlab.train.data import BUNDLED, bundled_shards, open_sources, shard_tokenizer
    from llmlab.train.pretrain import data_model_fields

    data = recipe.data
    if data.sources:
        raise ConfigError("runs that share their data train on one data.source (the bundled corpus or a shard "
                          "directory), not on data.sources.")
    source = data.source
    if source == BUNDLED:
        source = str(bundled_shards(directory, data.vocab_size, data.max_chars,
                                    objective_special_tokens(recipe.objective_name), progress=progress).directory)
    shards = open_sources(dataclasses.replace(data, source=source))[0].stream
    return source, data_model_fields(recipe, shard_tokenizer(shards), shards)["vocab_size"]
