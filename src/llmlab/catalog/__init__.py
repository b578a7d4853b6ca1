"""The surveys' model tables as data (models.py), each published size linked to a full-size preset, and the columns
computed from it: parameters on the meta device, training compute, tokens per parameter, the Chinchilla-optimal
token count (the 20:1 rule) and inference memory."""

from __future__ import annotations

from functools import lru_cache

from llmlab.catalog.models import ALSO_NAMED, ENTRIES, PUBLIC_APIS, Entry, Size
from llmlab.errors import ConfigError

__all__ = ["ALSO_NAMED", "ENTRIES", "PUBLIC_APIS", "Entry", "Size", "entries", "families", "preset_config", "rows"]
TOLERANCE = 0.02  # a preset's count may differ from the published figure by this much without a stated reason


def families() -> list[str]:
    """Every family tag and linked preset name, for --family."""
    names = {entry.family for entry in ENTRIES}
    names |= {size.preset for entry in ENTRIES for size in entry.sizes if size.preset}
    return sorted(names)


def entries(open_only: bool = False, family: str | None = None) -> list[Entry]:
    """The catalogue's rows: all of them, the open-weight ones, or those of one family (tag or preset name)."""
    if family is not None:
        wanted = family.lower()
        if wanted not in families():
            raise ConfigError(f"The catalogue has no family {family!r}; choose one of {', '.join(families())}.")
    chosen = []
    for entry in ENTRIES:
        if open_only and not entry.open_weights:
            continue
        if family is not None and wanted != entry.family and wanted not in {s.preset for s in entry.sizes}:
            continue
        chosen.append(entry)
    return chosen


def preset_config(size: Size):
    """The ModelConfig a size links to (its preset with its overrides), or None."""
    from llmlab.model import presets

    if size.preset is None:
        return None
    return presets.get(size.preset, size.preset_size, **size.overrides)


@lru_cache(maxsize=None)
def _computed(preset: str, preset_size: str, overrides: tuple) -> dict:
    from llmlab.scaling.estimate import kv_cache_bytes_per_token, model_shape

    config = preset_config(Size("", None, preset, preset_size, overrides=dict(overrides)))
    shape = model_shape(config)
    return {"config": config, "shape": shape, "kv": kv_cache_bytes_per_token(config, "bf16")}


def size_row(entry: Entry, size: Size | None) -> dict:
    """One line of the table: the entry's survey columns and, for a linked size, the computed columns."""
    from llmlab.scaling.estimate import chinchilla_tokens, training_compute, training_flops_per_token

    row = {"model": entry.name, "size": size.label if size else None, "organisation": entry.organisation,
           "date": entry.date, "parameters_survey": entry.parameters, "training_tokens_survey": entry.training_tokens,
           "architecture": entry.architecture, "open_weights": entry.open_weights, "open_note": entry.open_note,
           "base_model": entry.base_model, "paper": entry.paper, "family": entry.family, "kind": entry.kind,
           "parameters_published": size.parameters if size else None, "tokens": size.tokens if size else None,
           "preset": None, "parameters": None, "active_parameters": None, "deviation": None, "reason": None,
           "source": size.source if size else None, "tokens_per_parameter": None, "chinchilla_tokens": None,
           "compute_6nd": None, "compute_with_attention": None, "weights_bytes_bf16": None,
           "kv_cache_bytes_per_token_bf16": None}
    if size is None or size.preset is None:
        return row
    computed = _computed(size.preset, size.preset_size, tuple(sorted(size.overrides.items())))
    config, shape = computed["config"], computed["shape"]
    n = shape.active_parameters
    label = f"{size.preset}:{size.preset_size}" + ("+" if size.overrides else "")
    row.update(preset=label, overrides=size.overrides or None, parameters=shape.parameters, active_parameters=n,
               reason=size.reason, chinchilla_tokens=chinchilla_tokens(n, "20:1"),
               weights_bytes_bf16=2 * shape.parameters, kv_cache_bytes_per_token_bf16=computed["kv"])
    if size.parameters:
        row["deviation"] = shape.parameters / size.parameters - 1
    if size.tokens:
        per_token = training_flops_per_token(n, shape.attention_layers, config.n_heads * config.dim_head,
                                             config.max_seq_len)
        row.update(tokens_per_parameter=size.tokens / n, compute_6nd=training_compute(n, size.tokens),
                   compute_with_attention=per_token * size.tokens)
    return row


def rows(open_only: bool = False, family: str | None = None) -> list[dict]:
    """Every line of the catalogue table (one per published size) with its computed columns."""
    return [size_row(entry, size) for entry in entries(open_only, family) for size in (entry.sizes or (None,))]
