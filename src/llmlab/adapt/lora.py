"""LoRA (Hu et al. 2021), DoRA (Liu et al. 2024) and rsLoRA (Kalajdzievski 2023) on any llmlab model, saved in PEFT's
format under the Hugging Face module names of the base's family, so that PeftModel.from_pretrained loads it on the
transformers model (see llmlab.adapt.peft_format for the name and layout mapping)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from llmlab.adapt.peft_format import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_BIN, PREFIX, adaptable,
                                      checkpoint_modules, checkpoint_names, hugging_face_names, layouts, split_key,
                                      target_names, task_type)
from llmlab.errors import CheckpointError, ConfigError
from llmlab.files import read_json_object
from llmlab.model.attention import Attention
from llmlab.model.mlp import MLP

ADAPTER = "default"  # PEFT's adapter name; a model carries one adapter at a time
# a target may also name a group: every projection of the attention sublayers (self and cross), or of the MLPs
GROUPS = {"attention": Attention, "mlp": MLP}
QUANTIZE = ("none", "nf4")
# PEFT options whose effect llmlab does not reproduce when loading an adapter: field -> the only supported value
UNSUPPORTED = {"bias": "none", "modules_to_save": None, "rank_pattern": None, "alpha_pattern": None,
               "layer_replication": None, "lora_bias": False, "use_qalora": False, "target_parameters": None,
               "trainable_token_indices": None, "alora_invocation_tokens": None, "megatron_config": None}


@dataclass(frozen=True)
class LoraConfig:
    """Which linear layers get a low-rank update delta = (alpha / r) B A (alpha / sqrt(r) under rsLoRA), and how."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target: tuple[str, ...] = ("attention",)  # module names (llmlab's or the family's Hugging Face ones) or groups
    use_dora: bool = False
    use_rslora: bool = False
    quantize: str = "none"  # "nf4": QLoRA's 4-bit NormalFloat base weights (CUDA and bitsandbytes)

    def __post_init__(self):
        target = (self.target,) if isinstance(self.target, str) else tuple(self.target)
        object.__setattr__(self, "target", target)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRA r must be a positive integer, not {self.r!r}.")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be positive, not {self.alpha!r}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1), not {self.dropout!r}.")
        if not target or not all(isinstance(name, str) and name for name in target):
            raise ConfigError(f"LoRA target must list module names, not {self.target!r}.")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"LoRA quantize must be one of {', '.join(QUANTIZE)}, not {self.quantize!r}.")
        if self.quantize == "nf4":
            _check_nf4()


def _check_nf4() -> None:
    if not torch.cuda.is_available():
        raise ConfigError("LoRA quantize: nf4 (QLoRA) needs a CUDA GPU, and none is available.")
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError("LoRA quantize: nf4 (QLoRA) needs the bitsandbytes package (pip install bitsandbytes).") \
            from None


def _peft():
    try:
        import peft
    except ModuleNotFoundError:
        raise ConfigError("LoRA needs the peft package (pip install 'llmlab[adapt]').") from None
    return peft


def match_targets(model: nn.Module, target: tuple[str, ...]) -> list[str]:
    """The names of the layers target selects; a target name that selects none raises ConfigError naming it."""
    candidates = adaptable(model)
    hf = {theirs: ours for ours, theirs in (hugging_face_names(model) or {}).items()}
    chosen = set()
    for wanted in target:
        if wanted in GROUPS:
            hits = {name for name in candidates if isinstance(model.get_submodule(name.rsplit(".", 1)[0]),
                                                              GROUPS[wanted])}
        else:
            hits = {name for name in candidates if _suffix(name, wanted)}
            hits |= {ours for theirs, ours in hf.items() if _suffix(theirs, wanted)}
        if not hits:
            known = sorted({name.rsplit(".", 1)[-1] for name in [*candidates, *hf]} | set(GROUPS))
            raise ConfigError(f"LoRA target {wanted!r} matches no linear layer of this {model.config.family} model "
                              f"(its names: {', '.join(known)}).")
        chosen |= hits
    return sorted(chosen)


def _suffix(name: str, wanted: str) -> bool:
    return name == wanted or name.endswith("." + wanted)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's LoRA-wrapped layers by name (empty when it has no adapter)."""
    layer = _peft().tuners.lora.LoraLayer
    return {name: module for name, module in model.named_modules() if isinstance(module, layer)}


def apply_lora(model: nn.Module, config: LoraConfig) -> int:
    """Wrap the layers config.target selects with LoRA (an identity change until trained), freeze everything else,
    and return how many layers were wrapped."""
    # PEFT's own LoRA layers fit llmlab's nn.Linear projections, so DoRA, rsLoRA, dropout and merging come from PEFT;
    # only the names and layouts of its files are llmlab's to derive (llmlab.adapt.peft_format).
    peft = _peft()
    if lora_layers(model):
        raise ConfigError("this model already has a LoRA adapter; merge it before applying another.")
    names = match_targets(model, config.target)
    if config.quantize == "nf4":
        _check_nf4()
        quantize_nf4(model)
    peft_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                  target_modules=names, use_dora=config.use_dora, use_rslora=config.use_rslora)
    peft.inject_adapter_in_model(peft_config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    model.lora_config = config
    return len(lora_layers(model))


def quantize_nf4(model: nn.Module) -> None:
    """QLoRA's base: every adaptable linear layer's weight in bitsandbytes' 4-bit NormalFloat on the GPU."""
    import bitsandbytes as bnb

    for name, layer in adaptable(model).items():
        parent, child = name.rsplit(".", 1)
        quantized = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", device="cuda")
        quantized.weight = bnb.nn.Params4bit(layer.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        if layer.bias is not None:
            quantized.bias = nn.Parameter(layer.bias.data.cuda(), requires_grad=False)
        setattr(model.get_submodule(parent), child, quantized.cuda())


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model with its adapter switched off (DPO's reference); the adapter is back afterwards."""
    layers = list(lora_layers(model).values())
    trainable = {parameter: parameter.requires_grad for parameter in model.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for parameter, flag in trainable.items():
            parameter.requires_grad_(flag)


def _config_of(model: nn.Module) -> LoraConfig:
    config = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise ConfigError("this model has no LoRA adapter (apply_lora or load_adapter first).")
    return config


def adapter_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Each wrapped layer's lora_A [r, in], lora_B [out, r] and (DoRA) magnitude [out], under PEFT's key suffixes."""
    state = {}
    for name, layer in lora_layers(model).items():
        tensors = {"lora_A.weight": layer.lora_A[ADAPTER].weight, "lora_B.weight": layer.lora_B[ADAPTER].weight}
        if layer.use_dora.get(ADAPTER):
            tensors["lora_magnitude_vector"] = layer.lora_magnitude_vector[ADAPTER].weight
        state[name] = tensors
    return state


def save_adapter(model: nn.Module, directory: str | os.PathLike, base: str, overwrite: bool = False) -> Path:
    """Write only the adapter, in PEFT's format (adapter_config.json, adapter_model.safetensors keyed by the Hugging
    Face module names of the base's family), atomically; base becomes base_model_name_or_path."""
    from safetensors.torch import save_file

    from llmlab.model.checkpoint import atomic_directory

    peft, config = _peft(), _config_of(model)
    state = adapter_state(model)
    places = layouts(model, list(state))
    tensors = {f"{PREFIX}{places[name].name}.{kind}": places[name].store(kind, tensor.detach().cpu())
               for name, kinds in state.items() for kind, tensor in kinds.items()}
    transposed = {layout.transposed for layout in places.values()}
    if len(transposed) > 1:
        raise ConfigError(f"the adapted layers of this {model.config.family} model mix Conv1D and Linear "
                          f"checkpoint layouts, which one PEFT fan_in_fan_out setting cannot describe.")
    peft_config = peft.LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, use_dora=config.use_dora,
        use_rslora=config.use_rslora, fan_in_fan_out=transposed == {True}, base_model_name_or_path=base,
        target_modules=target_names([layout.name for layout in places.values()], checkpoint_names(model)),
        task_type=task_type(model.config))
    settings = {key: sorted(value) if isinstance(value, set) else value for key, value in peft_config.to_dict().items()}
    with atomic_directory(directory, overwrite) as staging:
        (staging / ADAPTER_CONFIG).write_text(json.dumps(settings, indent=2))
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return Path(directory)


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """adapter_config.json of an adapter directory, checked to be a LoRA adapter whose options llmlab reproduces."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{directory} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter directory.")
    settings = read_json_object(directory / ADAPTER_CONFIG)
    if settings.get("peft_type") != "LORA":
        raise ConfigError(f"{directory / ADAPTER_CONFIG} holds a {settings.get('peft_type')!r} adapter; llmlab "
                          f"loads LORA adapters only.")
    for field, supported in UNSUPPORTED.items():
        value = settings.get(field)
        if value not in (None, [], {}) and value != supported:
            raise ConfigError(f"{directory / ADAPTER_CONFIG} sets {field}={value!r}, which llmlab does not support "
                              f"(only {supported!r}).")
    return settings


def _read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    from llmlab.model.checkpoint import read_safetensors

    if (directory / ADAPTER_WEIGHTS).exists():
        return read_safetensors(directory / ADAPTER_WEIGHTS)
    if (directory / ADAPTER_WEIGHTS_BIN).exists():
        try:
            return torch.load(directory / ADAPTER_WEIGHTS_BIN, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for corrupt or unsafe pickles
            raise CheckpointError(f"{directory / ADAPTER_WEIGHTS_BIN} cannot be read safely ({error}).") from None
    raise CheckpointError(f"{directory} has no {ADAPTER_WEIGHTS}.")


def load_adapter(model: nn.Module, directory: str | os.PathLike, base: str | None = None) -> nn.Module:
    """Apply the PEFT LoRA adapter in directory to model (its base; base names it in errors) and return model."""
    directory, base = Path(directory), base or f"this {model.config.family} model"
    settings = read_adapter_config(directory)
    weights = _read_adapter_weights(directory)
    places = {theirs: ours for ours, theirs in checkpoint_modules(model, list(adaptable(model))).items()}
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        parts = split_key(key)
        if parts is None:
            raise CheckpointError(f"{directory / ADAPTER_WEIGHTS} has tensor {key}, which is not a LoRA weight.")
        if parts[0] not in places:
            raise CheckpointError(f"the adapter {directory} has weights for {parts[0]}, which its base {base} "
                                  f"({model.config.family}) does not have.")
        found.setdefault(places[parts[0]], {})[parts[1]] = tensor
    if not found:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS} holds no LoRA weights.")
    try:
        config = LoraConfig(r=int(settings.get("r", 8)), alpha=float(settings.get("lora_alpha", 8)),
                            dropout=float(settings.get("lora_dropout") or 0.0), target=tuple(sorted(found)),
                            use_dora=bool(settings.get("use_dora")), use_rslora=bool(settings.get("use_rslora")))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{directory / ADAPTER_CONFIG} has an invalid value ({error}).") from None
    apply_lora(model, config)
    layouts_by_ours = layouts(model, list(found))
    with torch.no_grad():
        for name, kinds in adapter_state(model).items():
            where = layouts_by_ours[name].name
            if set(kinds) != set(found[name]):
                raise CheckpointError(f"the adapter {directory} has {', '.join(sorted(found[name]))} for {where}, "
                                      f"where its settings need {', '.join(sorted(kinds))}.")
            for kind, parameter in kinds.items():
                tensor = found[name][kind]
                if tensor.shape != parameter.shape:  # a permutation keeps the shape
                    raise CheckpointError(f"the adapter {directory} does not fit its base {base}: {where}.{kind} has "
                                          f"shape {tuple(tensor.shape)}, the base's layer needs "
                                          f"{tuple(parameter.shape)}.")
                parameter.copy_(layouts_by_ours[name].restore(kind, tensor))
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model (no LoRA layers left)."""
    _config_of(model)
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    del model.lora_config
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
