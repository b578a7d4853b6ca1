"""Blocks, stacks and the one Model class: decoder, prefix decoder, encoder and encoder-decoder (survey §4.2.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import ConfigError
from llmlab.model.attention import Attention, KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.mlp import ACTIVATIONS, MLP
from llmlab.model.moe import MoE
from llmlab.model.norms import make_norm
from llmlab.model.positions import RelativeBias, Rotary, alibi_bias, alibi_slopes, sinusoidal_table


@dataclass
class ModelOutput:
    """What Model.forward returns."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None
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

    def _residual(self, x, sublayer, norm: nn.Module, out_norm: nn.Module | None):
        placement = self.config.norm_placement
        alpha = self.config.residual_scale
        if placement == "post":
            y, aux = sublayer(x)
            return norm(x * alpha + self.drop(y)), aux
        y, aux = sublayer(norm(x))
        if out_norm is not None:
            y = out_norm(y)
        return x * alpha + self.drop(y), aux

    def forward(self, x, mask, is_causal, rope, cache, layer, memory=None, memory_mask=None):
        """Apply the layer; returns the new hidden states and the MoE auxiliary loss (or None)."""
        def self_attention(h):
            return self.attn(h, mask, is_causal, rope, cache, layer), None

        if self.config.parallel_residual:
            h = self.attn_norm(x)
            mlp_out, aux = self._feed_forward(h if self.config.parallel_shared_norm else self.mlp_norm(x))
            return x * self.config.residual_scale + self.drop(self_attention(h)[0] + mlp_out), aux
        x, _ = self._residual(x, self_attention, self.attn_norm, getattr(self, "attn_out_norm", None))
        if hasattr(self, "cross_attn"):
            def cross_attention(h):
                return self.cross_attn(h, memory_mask, False, None, cache, layer, memory), None
            x, _ = self._residual(x, cross_attention, self.cross_norm, getattr(self, "cross_out_norm", None))
        return self._residual(x, self._feed_forward, self.mlp_norm, getattr(self, "mlp_out_norm", None))


def _allowed(q_len, k_len, past, causal, key_padding=None, prefix_lengths=None, window=None, device=None):
    """Boolean [batch|1, 1, q, k] of which keys each query may see, or None when every key is visible."""
    q_pos = torch.arange(past, past + q_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = None
    if causal:
        allowed = (k_pos <= q_pos)[None, None]
        if prefix_lengths is not None:
            allowed = allowed | (k_pos[None, None] < prefix_lengths.to(device)[:, None, None, None])
    if window is not None:
        in_window = ((q_pos - k_pos) < window)[None, None]
        allowed = in_window if allowed is None else allowed & in_window
    if key_padding is not None:
        visible = key_padding.bool()[:, None, None, :]
        allowed = visible if allowed is None else allowed & visible
    return allowed


def _additive(allowed: torch.Tensor | None, bias: torch.Tensor | None, dtype) -> torch.Tensor | None:
    if allowed is None:
        return bias
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask if bias is None else mask + bias


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

    def _position_bias(self, q_len, k_len, past, device):
        q_pos = torch.arange(past, past + q_len, device=device)
        k_pos = torch.arange(k_len, device=device)
        if self.config.position == "alibi":
            return alibi_bias(self.alibi_slopes, q_pos, k_pos)
        if hasattr(self, "relative_bias"):
            return self.relative_bias(q_pos, k_pos)
        return None

    def forward(self, x, position_ids=None, key_padding=None, prefix_lengths=None, cache=None,
                memory=None, memory_padding=None):
        """Run every block; returns (hidden states after the final norm, summed MoE auxiliary loss or None)."""
        batch, q_len, _ = x.shape
        past = cache.length if cache is not None else 0
        k_len = past + q_len
        device, dtype = x.device, x.dtype
        bias = self._position_bias(q_len, k_len, past, device)
        plain_causal = self.causal and past == 0 and key_padding is None and prefix_lengths is None
        if self.config.position == "relative" and self.config.relative_per_layer:
            plain_causal = False  # each block adds its own bias, so the causal mask must be explicit
        masks = {}
        for kind in {self.config.layer_kind(i) for i in range(len(self.blocks))}:
            window = self.config.attn_window if kind == "local" else None
            if plain_causal and window is None and bias is None:
                masks[kind] = (None, True)
                continue
            allowed = _allowed(q_len, k_len, past, self.causal and (q_len > 1 or window is not None),
                               key_padding, prefix_lengths, window, device)
            masks[kind] = (_additive(allowed, bias, dtype), False)
        memory_mask = None
        if memory_padding is not None:
            memory_mask = _additive(memory_padding.bool()[:, None, None, :], None, dtype)
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(position_ids)
            rope = (self.rotary, cos, sin)
        aux_total = None
        for index, block in enumerate(self.blocks):
            mask, is_causal = masks[self.config.layer_kind(index)]
            if hasattr(block, "relative_bias"):
                own = block.relative_bias(torch.arange(past, k_len, device=device), torch.arange(k_len, device=device))
                mask = own if mask is None else mask + own
            x, aux = block(x, mask, is_causal, rope, cache, index, memory, memory_mask)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
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


def _positions_from_mask(attention_mask: torch.Tensor | None, batch: int, past: int, length: int, device):
    if attention_mask is None:
        return torch.arange(past, past + length, device=device).expand(batch, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


class Model(nn.Module):
    """One transformer language model built from a ModelConfig: families differ by config, not by code."""

    tokenizer = None  # the tokenizers.Tokenizer that llmlab.load found beside the weights; no part of the state

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
        if isinstance(module, Attention):
            nn.init.normal_(module.o.weight, mean=0.0, std=std / (2 * self.config.n_layers) ** 0.5)
        if isinstance(module, MLP):
            nn.init.normal_(module.down.weight, mean=0.0, std=std / (2 * self.config.n_layers) ** 0.5)

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

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The language-model head: final hidden states → vocabulary logits."""
        if hasattr(self, "proj_out"):
            hidden = self.proj_out(hidden)
        if self.config.head_transform:
            hidden = self.head_norm(ACTIVATIONS[self.config.activation](self.head_dense(hidden)))
        if self.config.head_input_scale != 1.0:
            hidden = hidden * self.config.head_input_scale
        return self.head(hidden)

    def encode(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None):
        """Run the encoder stack; returns (hidden states, auxiliary loss or None)."""
        if position_ids is None and self.config.position in ("learned", "sinusoidal"):
            position_ids = _positions_from_mask(None, input_ids.shape[0], 0, input_ids.shape[1], input_ids.device)
        x = self.embed_drop(self.embed(input_ids, position_ids, token_type_ids))
        return self.encoder(x, position_ids, attention_mask)

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
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits [batch, seq, vocab] (and loss when labels are given; labels are shifted inside for decoders)."""
        config = self.config
        aux_total = None
        memory = encoder_hidden_states
        check_ids = not self.training and not torch.compiler.is_compiling()  # a host sync: not in every training step
        if config.arch == "encoder" or (config.arch == "encoder_decoder" and memory is None):
            check_model_inputs(config, input_ids, attention_mask, check_ids=check_ids)
        if config.arch == "encoder_decoder" and memory is None:
            memory, aux_total = self.encode(input_ids, attention_mask, token_type_ids=token_type_ids)
        if config.arch == "encoder":
            hidden, aux_total = self.encode(input_ids, attention_mask, position_ids, token_type_ids)
        else:
            if config.arch == "encoder_decoder":
                if decoder_input_ids is None:
                    if labels is None:
                        raise ValueError("An encoder-decoder needs decoder_input_ids or labels.")
                    decoder_input_ids = self.shift_right(labels)
                ids, padding, memory_padding = decoder_input_ids, decoder_attention_mask, attention_mask
            else:
                ids, padding, memory_padding = input_ids, attention_mask, None
            if use_cache and past_key_values is None:
                past_key_values = KVCache(len(self.decoder.blocks))
            past = past_key_values.length if past_key_values is not None else 0
            names = ("decoder_input_ids", "decoder_attention_mask") if config.arch == "encoder_decoder" else None
            check_model_inputs(config, ids, padding, past, check_ids, names or ("input_ids", "attention_mask"))
            if position_ids is None and config.position in ("learned", "sinusoidal", "rope"):
                position_ids = _positions_from_mask(padding, ids.shape[0], past, ids.shape[1], ids.device)
            x = self.embed_drop(self.embed(ids, position_ids, None))
            if padding is not None and past == 0 and bool(padding.all()):
                padding = None
            hidden, aux = self.decoder(x, position_ids, padding, prefix_lengths, past_key_values, memory,
                                       memory_padding)
            aux_total = aux if aux_total is None else aux_total + (aux if aux is not None else 0)
        logits = self.logits(hidden) if config.lm_head else None
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if config.pooler else None
        loss = None
        if labels is not None and logits is not None:
            if config.arch in ("decoder", "prefix_decoder"):
                logits_for_loss, targets = logits[:, :-1], labels[:, 1:]
            else:
                logits_for_loss, targets = logits, labels
            loss = F.cross_entropy(logits_for_loss.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if aux_total is not None:
                loss = loss + aux_total
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_total, past_key_values=past_key_values,
                           hidden_states=hidden, encoder_hidden_states=memory, pooled=pooled)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: the start token, then the labels without their last token."""
        start = self.config.decoder_start_token_id
        start = self.config.pad_token_id if start is None else start
        if start is None:
            raise ValueError("ModelConfig.decoder_start_token_id (or pad_token_id) is needed to shift labels.")
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        return shifted.masked_fill(shifted == -100, pad)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Greedy or sampled continuation; returns prompt + new tokens (decoder ids for encoder-decoders)."""
        from llmlab.infer.sampling import check_sampling, next_token

        check_model_inputs(self.config, input_ids, attention_mask)
        if do_sample:
            check_sampling(temperature, top_k, top_p)
        length = 1 if self.config.arch == "encoder_decoder" else input_ids.shape[1]
        if self.config.position in FIXED_CONTEXT_POSITIONS and length + max_new_tokens > self.config.max_seq_len:
            raise ConfigError(f"{length} prompt tokens plus max_new_tokens={max_new_tokens} exceed the model's "
                              f"max_seq_len {self.config.max_seq_len}.")
        if self.config.arch == "encoder":
            raise ValueError("An encoder-only model cannot generate text.")
        if self.config.position == "glm2d":
            raise ValueError("GLM generation needs 2-D blank-infilling positions; call forward with position_ids.")
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else (eos if eos is not None else 0)
        batch = input_ids.shape[0]
        encoder_kwargs = {}
        if self.config.arch == "encoder_decoder":
            memory, _ = self.encode(input_ids, attention_mask)
            encoder_kwargs = {"encoder_hidden_states": memory, "attention_mask": attention_mask}
            start = self.config.decoder_start_token_id
            start = pad if start is None else start
            sequence = input_ids.new_full((batch, 1), start)
            mask = None
        else:
            sequence = input_ids
            mask = attention_mask
        prefix = None
        if self.config.arch == "prefix_decoder":
            prefix = torch.full((batch,), input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        cache = None
        for _ in range(max_new_tokens):
            step_ids = sequence if cache is None else sequence[:, -1:]
            if self.config.arch == "encoder_decoder":
                out = self(input_ids, decoder_input_ids=step_ids, past_key_values=cache, use_cache=use_cache,
                           **encoder_kwargs)
            else:
                out = self(step_ids, attention_mask=mask, past_key_values=cache, use_cache=use_cache,
                           prefix_lengths=prefix if cache is None else None)
            if use_cache:
                cache = out.past_key_values
            token = next_token(out.logits[:, -1], do_sample, temperature, top_k, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            if eos is not None:
                finished |= token == eos
                if bool(finished.all()):
                    break
        return sequence
