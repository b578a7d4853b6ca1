"""Blocks, stacks and the one Model class: decoder, prefix decoder, encoder and encoder-decoder (survey §4.2.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import ConfigError
from llmlab.model.attention import (BACKENDS, Attention, AttentionSpec, Cache, check_backend, cross_attention_spec,
                                    resolve_backend)
from llmlab.model.config import ModelConfig
from llmlab.model.mlp import ACTIVATIONS, MLP
from llmlab.model.moe import MoE
from llmlab.model.norms import make_norm
from llmlab.model.positions import AlibiBias, RelativeBias, Rotary, alibi_slopes, sinusoidal_table


@dataclass
class ModelOutput:
    """What Model.forward returns."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class Embeddings(nn.Module):
    """Token embeddings plus absolute positions (learned, sinusoidal or GLM 2-D) and token types."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.embed_proj_dim or config.d_model)
        self.proj_in = (
            nn.Linear(config.embed_proj_dim, config.d_model, bias=False)
            if config.embed_proj_dim and config.embed_proj_dim != config.d_model else None
        )
        if config.position in ("learned", "glm2d"):
            self.positions = nn.Embedding(config.max_seq_len + config.position_offset, config.d_model)
        if config.position == "glm2d":
            self.block_positions = nn.Embedding(config.max_seq_len, config.d_model)
        if config.position == "sinusoidal":
            self.register_buffer("sinusoid", torch.empty(config.max_seq_len, config.d_model), persistent=False)
            self.reset_buffers()
        self.token_types = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.norm = make_norm(config) if config.embedding_norm else None

    def reset_buffers(self) -> None:
        """Compute the sinusoid table (again, e.g. after building on the meta device)."""
        if hasattr(self, "sinusoid"):
            self.sinusoid.copy_(sinusoidal_table(self.config.max_seq_len, self.config.d_model))

    def forward(self, ids, position_ids=None, token_type_ids=None) -> torch.Tensor:
        """Embed token ids [batch, seq] with positions [batch, seq] (or [batch, 2, seq] for GLM)."""
        x = self.tokens(ids)
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        if self.proj_in is not None:
            x = self.proj_in(x)
        position = self.config.position
        if position == "learned":
            x = x + self.positions(position_ids + self.config.position_offset)
        elif position == "glm2d":
            x = x + self.positions(position_ids[:, 0]) + self.block_positions(position_ids[:, 1])
        elif position == "sinusoidal":
            x = x + self.sinusoid[position_ids].to(x.dtype)
        if self.token_types is not None:
            x = x + self.token_types(torch.zeros_like(ids) if token_type_ids is None else token_type_ids)
        return x if self.norm is None else self.norm(x)


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, and a dense or mixture-of-experts MLP."""

    def __init__(self, config: ModelConfig, layer: int, causal: bool, cross: bool):
        super().__init__()
        self.config = config
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        if config.position == "relative" and config.relative_per_layer:
            self.relative_bias = RelativeBias(config, bidirectional=not causal)
        if cross:
            self.cross_norm = make_norm(config)
            self.cross_attn = Attention(config, cross=True)
        if not (config.parallel_residual and config.parallel_shared_norm):
            self.mlp_norm = make_norm(config)
        self.mlp = MoE(config) if config.is_moe_layer(layer) else MLP(config)
        if config.norm_placement == "sandwich":
            self.attn_out_norm = make_norm(config)
            self.mlp_out_norm = make_norm(config)
            if cross:
                self.cross_out_norm = make_norm(config)
        self.drop = nn.Dropout(config.dropout)

    def _feed_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.mlp, MoE):
            return self.mlp(x)
        return self.mlp(x), None

    def _add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x × residual_scale + dropout(y), without the no-op multiply and dropout call of a decode step."""
        if self.training and self.drop.p > 0:
            y = self.drop(y)
        alpha = self.config.residual_scale
        return (x if alpha == 1.0 else x * alpha) + y

    def _residual(self, x, sublayer, norm: nn.Module, out_norm: nn.Module | None):
        if self.config.norm_placement == "post":
            y, aux = sublayer(x)
            return norm(self._add(x, y)), aux
        y, aux = sublayer(norm(x))
        if out_norm is not None:
            y = out_norm(y)
        return self._add(x, y), aux

    def forward(self, x, lowered, backend, rope=None, cache=None, layer=0, slots=None, memory=None,
                memory_lowered=None):
        """Apply the layer; returns the new hidden states and the MoE auxiliary loss (or None)."""
        def self_attention(h):
            return self.attn(h, lowered, backend, rope, cache, layer, slots), None

        if self.config.parallel_residual:
            h = self.attn_norm(x)
            mlp_out, aux = self._feed_forward(h if self.config.parallel_shared_norm else self.mlp_norm(x))
            return self._add(x, self_attention(h)[0] + mlp_out), aux
        x, _ = self._residual(x, self_attention, self.attn_norm, getattr(self, "attn_out_norm", None))
        if hasattr(self, "cross_attn"):
            def cross_attention(h):
                return self.cross_attn(h, memory_lowered, backend, None, cache, layer, None, memory), None
            x, _ = self._residual(x, cross_attention, self.cross_norm, getattr(self, "cross_out_norm", None))
        return self._residual(x, self._feed_forward, self.mlp_norm, getattr(self, "mlp_out_norm", None))


class Stack(nn.Module):
    """A stack of blocks with its position machinery (RoPE, ALiBi or T5 buckets) and final norm."""

    def __init__(self, config: ModelConfig, n_layers: int, causal: bool, cross: bool = False):
        super().__init__()
        self.config = config
        self.causal = causal
        self.blocks = nn.ModuleList(Block(config, i, causal, cross) for i in range(n_layers))
        self.norm = make_norm(config) if config.final_norm else None
        self.rotary = Rotary(config) if config.position == "rope" else None
        if config.position == "relative" and not config.relative_per_layer:
            self.relative_bias = RelativeBias(config, bidirectional=not causal)
        if config.position == "alibi":
            self.register_buffer("alibi_slopes", torch.empty(config.n_heads), persistent=False)
            self.reset_buffers()

    def reset_buffers(self) -> None:
        """Compute the ALiBi slopes (again, e.g. after building on the meta device)."""
        if hasattr(self, "alibi_slopes"):
            self.alibi_slopes.copy_(alibi_slopes(self.config.n_heads))

    def position_biases(self) -> tuple:
        """The additive score biases every layer of the stack shares (ALiBi or T5's shared buckets)."""
        if hasattr(self, "alibi_slopes"):
            return (AlibiBias(self.alibi_slopes),)
        return (self.relative_bias,) if hasattr(self, "relative_bias") else ()

    def forward(self, x, attention: AttentionSpec, positions=None, backend=None, cache=None, memory=None,
                memory_attention: AttentionSpec | None = None):
        """Run every block; returns (hidden states after the final norm, summed MoE auxiliary loss or None)."""
        backend = backend or BACKENDS["sdpa"]
        shared = self.position_biases()
        windows = {kind: self.config.attn_window if kind == "local" else None
                   for kind in {self.config.layer_kind(i) for i in range(len(self.blocks))}}
        lowered = {kind: backend.lower(attention, window, shared, x.dtype) for kind, window in windows.items()}
        memory_lowered = None
        if memory_attention is not None:
            memory_lowered = backend.lower(memory_attention, None, (), x.dtype)
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(positions)
            rope = (self.rotary, cos, sin)
        aux_total = None
        for index, block in enumerate(self.blocks):
            kind = self.config.layer_kind(index)
            layer_lowered = lowered[kind]
            if hasattr(block, "relative_bias"):
                layer_lowered = backend.lower(attention, windows[kind], (*shared, block.relative_bias), x.dtype)
            x, aux = block(x, layer_lowered, backend, rope, cache, index, attention.query_index, memory,
                           memory_lowered)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if cache is not None:
            cache.advance(x.shape[1])
        if self.norm is not None:
            x = self.norm(x)
        return x, aux_total


FIXED_CONTEXT_POSITIONS = ("learned", "sinusoidal", "glm2d")  # tables of max_seq_len rows


def check_model_inputs(config: ModelConfig, ids, mask=None, past: int = 0, check_ids: bool = True,
                       names: tuple[str, str] = ("input_ids", "attention_mask")) -> None:
    """Raise ConfigError for inputs the model cannot take: ids not [batch, length] integers, a mask not one entry per
    position (cached ones too), more positions than a fixed context holds, or (check_ids) ids outside the vocabulary."""
    name, mask_name = names
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        found = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        hint = f" (one sequence is {name}[None])" if isinstance(ids, torch.Tensor) and ids.dim() == 1 else ""
        raise ConfigError(f"{name} must be a 2-D [batch, length] tensor of integer token ids, not {found}{hint}.")
    expected = (ids.shape[0], past + ids.shape[1])
    if mask is not None and tuple(mask.shape) != expected:
        cached = f" and {past} cached positions" if past else ""
        raise ConfigError(f"{mask_name} has shape {tuple(mask.shape)}, but {name} of shape {tuple(ids.shape)}{cached} "
                          f"needs {expected}.")
    if config.position in FIXED_CONTEXT_POSITIONS and past + ids.shape[1] > config.max_seq_len:
        raise ConfigError(f"{past + ids.shape[1]} positions exceed the model's max_seq_len {config.max_seq_len} "
                          f"({config.position} positions end there).")
    if check_ids and ids.numel():
        low, high = ids.aminmax()  # one reduction
        if bool((low < 0) | (high >= config.vocab_size)):
            bad = int(low) if int(low) < 0 else int(high)
            raise ConfigError(f"{name} holds the token id {bad}, outside the vocabulary 0..{config.vocab_size - 1}.")


@dataclass
class StackInput:
    """What one stack needs for a batch, prepared once outside the blocks: token ids, positions per row, the
    attention description and the cache it writes to."""

    ids: torch.Tensor
    positions: torch.Tensor | None  # [batch, seq] (GLM: [batch, 2, seq]) for learned, sinusoidal or rotary positions
    attention: AttentionSpec
    cache: Cache | None = None
    token_types: torch.Tensor | None = None
    encoder: bool = False


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids [batch, length] of the last length entries of a (left-)padded mask: real tokens count from 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Position ids [batch, seq] that restart at 0 where each packed document of a row begins."""
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


class Model(nn.Module):
    """One transformer language model built from a ModelConfig: families differ by config, not by code."""

    tokenizer = None  # the tokenizers.Tokenizer that llmlab.load found beside the weights; no part of the state
    generation_config = None  # the llmlab.infer.GenerationConfig of the checkpoint's generation_config.json
    attention_backend = "sdpa"  # a key of llmlab.model.attention.BACKENDS, or "auto"; see set_attention_backend

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        self.embed_drop = nn.Dropout(config.dropout)
        if config.has_encoder:
            self.encoder = Stack(config, config.n_layers, causal=False)
        if config.has_decoder:
            layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
            self.decoder = Stack(config, layers, causal=True, cross=config.arch == "encoder_decoder")
        width = config.embed_proj_dim or config.d_model
        if config.embed_proj_dim and config.embed_proj_dim != config.d_model:
            self.proj_out = nn.Linear(config.d_model, config.embed_proj_dim, bias=False)
        if config.head_transform:
            self.head_dense = nn.Linear(width, width)
            self.head_norm = make_norm(config, width)
        if config.lm_head:
            self.head = nn.Linear(width, config.vocab_size, bias=config.head_bias)
        self.tie_weights()
        if config.pooler:
            self.pooler = nn.Linear(config.d_model, config.d_model)
        if not self.embed.tokens.weight.is_meta:  # meta tensors hold no values; initialising them is slow
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        gain = self.config.init_branch_gain
        if isinstance(module, Attention):
            nn.init.normal_(module.o.weight, mean=0.0, std=std / (2 * self.config.n_layers) ** 0.5)
            v_width = module.n_kv_heads * module.head_dim
            value = module.qkv.weight[-v_width:] if hasattr(module, "qkv") else module.v.weight
            for weight in (value, module.o.weight):
                weight.data.mul_(gain)
        if isinstance(module, MLP):
            nn.init.normal_(module.down.weight, mean=0.0, std=std / (2 * self.config.n_layers) ** 0.5)
            for linear in (module.gate, module.up, module.down):
                if linear is not None:
                    linear.weight.data.mul_(gain)

    def tie_weights(self) -> None:
        """Share the head's weight with the token embedding when the config ties them."""
        if self.config.lm_head and self.config.tie_embeddings:
            self.head.weight = self.embed.tokens.weight

    def materialize(self, device=None) -> "Model":
        """Allocate a model built on the meta device (weights uninitialised), with buffers and ties restored."""
        model = self.to_empty(device=device or "cpu")
        model.tie_weights()
        model.reset_buffers()
        return model

    def materialize_buffers(self, device) -> None:
        """Allocate and compute the non-persistent buffers (ALiBi slopes, sinusoids) still on the meta device."""
        for module in self.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.is_meta:
                    module.register_buffer(name, torch.empty_like(buffer, device=device), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute every non-persistent buffer, e.g. after materialising a model built on the meta device."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_buffers"):
                module.reset_buffers()

    def set_attention_backend(self, name: str) -> "Model":
        """Attend through backend name ("sdpa", "flex", or "auto": flex on CUDA unless dropout is active); returns self."""
        self.attention_backend = check_backend(name)
        return self

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return self.embed.tokens.weight.device

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """How many distinct parameters the model has (tied weights counted once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed.tokens.weight.numel()
        return total

    def logits(self, hidden: torch.Tensor, index: int | torch.Tensor | None = None) -> torch.Tensor:
        """The language-model head on the final hidden states [batch, seq, d_model]: every position (index None,
        [batch, seq, vocab]), one position for all rows (an int, [batch, vocab]), one per row (a [batch] tensor,
        [batch, vocab]) or chosen ones (a [batch, k] tensor, [batch, k, vocab])."""
        if isinstance(index, int):
            hidden = hidden[:, index]
        elif index is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            hidden = hidden[rows, index] if index.dim() == 1 else hidden[rows[:, None], index]
        if hasattr(self, "proj_out"):
            hidden = self.proj_out(hidden)
        if self.config.head_transform:
            hidden = self.head_norm(ACTIVATIONS[self.config.activation](self.head_dense(hidden)))
        if self.config.head_input_scale != 1.0:
            hidden = hidden * self.config.head_input_scale
        return self.head(hidden)

    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, prefix_lengths: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                cache: Cache | None = None, encoder: bool = False, check_ids: bool = True) -> StackInput:
        """Turn a batch into what one stack needs: positions per row, the attention description and the cache view.

        attention_mask covers the cached positions too ([batch, cached + seq], 1 = token); document_ids [batch, seq]
        keeps packed documents apart; encoder picks an encoder-decoder's encoder stack (an encoder's is the only one).
        """
        config = self.config
        encoder = encoder or config.arch == "encoder"
        if encoder and cache is not None:
            raise ConfigError("An encoder stack keeps no cache; pass cache only for the decoder.")
        batch, length = input_ids.shape[0], input_ids.shape[-1]
        device = input_ids.device
        if cache is None:
            slots, key_count = torch.arange(length, device=device)[None], length
        else:
            slots, key_count = cache.slots(length, device)
        past = key_count - length if cache is None or getattr(cache, "contiguous", False) else None
        names = ("input_ids", "attention_mask")
        if config.arch == "encoder_decoder" and not encoder:
            names = ("decoder_input_ids", "decoder_attention_mask")
        if past is not None or attention_mask is None:
            check_model_inputs(config, input_ids, attention_mask, past or 0, check_ids, names)
        if position_ids is None and config.position in ("learned", "sinusoidal", "rope"):
            if document_ids is not None:
                position_ids = positions_from_documents(document_ids)
            elif attention_mask is not None and not encoder:
                position_ids = positions_from_mask(attention_mask, length)
            else:
                position_ids = slots.expand(batch, -1)
        key_padding = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding = attention_mask.bool()
            if key_padding.shape[1] < key_count:  # a preallocated cache's slots past the mask are not written yet
                key_padding = F.pad(key_padding, (0, key_count - key_padding.shape[1]), value=False)
        causal = not encoder and config.arch != "encoder"
        single_last_query = length == 1 and past is not None
        attention = AttentionSpec(
            query_index=slots, key_count=key_count, causal=causal and not single_last_query,
            key_padding=key_padding, prefix_lengths=prefix_lengths if causal else None, document_ids=document_ids,
            plain_causal=causal and past == 0 and key_padding is None and prefix_lengths is None
            and document_ids is None,
        )
        return StackInput(input_ids, position_ids, attention, cache, token_type_ids, encoder)

    def hidden(self, inputs: StackInput, memory: torch.Tensor | None = None,
               memory_padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run one prepared stack; returns (final hidden states [batch, seq, d_model], MoE auxiliary loss or None).
        An encoder-decoder's decoder attends to memory, the encoder's output, where memory_padding is 1."""
        stack = self.encoder if inputs.encoder else self.decoder
        x = self.embed_drop(self.embed(inputs.ids, inputs.positions, inputs.token_types))
        memory_attention = None
        if memory is not None:
            padding = None if memory_padding is None or bool(memory_padding.all()) else memory_padding.bool()
            memory_attention = cross_attention_spec(padding, x.shape[1], memory.shape[1], x.device)
        backend = resolve_backend(self.attention_backend, x.device, self.training and self.config.dropout > 0,
                                  inputs.cache)
        return stack(x, inputs.attention, inputs.positions, backend, inputs.cache, memory, memory_attention)

    def encode(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None, check_ids=None):
        """Run the encoder stack; returns (hidden states, auxiliary loss or None)."""
        if check_ids is None:
            check_ids = not self.training and not torch.compiler.is_compiling()
        inputs = self.prepare(input_ids, attention_mask, position_ids, token_type_ids=token_type_ids, encoder=True,
                              check_ids=check_ids)
        return self.hidden(inputs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> ModelOutput:
        """The Hugging Face-style call: logits [batch, seq, vocab] through prepare → stack → head, and with labels the
        mean loss of llmlab.objectives.losses (the Trainer's loss functions; decoders shift labels there).
        logits_at (bool [batch, seq]) keeps only those positions' logits, [positions, vocab] in row-major order, so
        that a loss over a few labelled positions never computes the head elsewhere."""
        config = self.config
        check_ids = not self.training and not torch.compiler.is_compiling()  # a host sync: not in every training step
        aux_total, memory = None, encoder_hidden_states
        if config.arch == "encoder_decoder" and memory is None:
            memory, aux_total = self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)
        if config.arch == "encoder":
            hidden, aux_total = self.encode(input_ids, attention_mask, position_ids, token_type_ids)
        else:
            memory_padding = None
            if config.arch == "encoder_decoder":
                if decoder_input_ids is None:
                    if labels is None:
                        raise ConfigError("An encoder-decoder needs decoder_input_ids or labels.")
                    decoder_input_ids = self.shift_right(labels)
                ids, padding, memory_padding = decoder_input_ids, decoder_attention_mask, attention_mask
            else:
                ids, padding = input_ids, attention_mask
            inputs = self.prepare(ids, padding, position_ids, prefix_lengths, document_ids, cache=past_key_values,
                                  check_ids=check_ids)
            hidden, aux = self.hidden(inputs, memory, memory_padding)
            aux_total = aux if aux_total is None else aux_total + (aux if aux is not None else 0)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if config.pooler else None
        if logits_at is not None:
            if labels is not None:
                raise ConfigError("Give labels or logits_at, not both: labels need every position's logits.")
            hidden = hidden[logits_at][None]
        logits = self.logits(hidden) if config.lm_head else None
        if logits_at is not None and logits is not None:
            logits = logits[0]
        loss = None
        if labels is not None and logits is not None:
            from llmlab.objectives.losses import mean_language_model_loss  # the loss functions the Trainer uses

            loss = mean_language_model_loss(config.arch, logits, labels, aux_total)
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_total, past_key_values=past_key_values,
                           hidden_states=hidden, encoder_hidden_states=memory, pooled=pooled)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: the start token, then the labels without their last token."""
        start = self.config.decoder_start_token_id
        start = self.config.pad_token_id if start is None else start
        if start is None:
            raise ConfigError("ModelConfig.decoder_start_token_id (or pad_token_id) is needed to shift labels.")
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        return shifted.masked_fill(shifted == -100, pad)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, attention_mask: torch.Tensor | None = None,
                 **options) -> torch.Tensor:
        """The Hugging Face-style call of llmlab.infer.generate: prompt + new tokens [batch, prompt + new] (the decoder
        ids, from the start token, for encoder-decoders); options are GenerationConfig fields, generator and
        use_cache."""
        if _generate_ids is None:
            raise ConfigError("Model.generate is llmlab.infer's generation; import llmlab.infer (llmlab.load does) "
                              "before calling it.")
        return _generate_ids(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, **options)


# Model.generate's implementation, registered by llmlab.infer on import: the model never imports the inference code.
_generate_ids = None


def register_generation(generate_ids) -> None:
    """Give Model.generate its implementation (llmlab.infer.generate.generate_ids registers itself)."""
    global _generate_ids
    _generate_ids = generate_ids
