"""The demo behind `make demo`: a small LLaMA-style model learns the bundled corpus on a CPU in a few minutes."""

from __future__ import annotations

import os
import time

import torch

import llmlab
from llmlab.data.corpus import bundled_documents
from llmlab.data.packing import random_batches
from llmlab.data.tokenizer import END_OF_TEXT, PAD, save_tokenizer, train_bpe_tokenizer
from llmlab.model import Model, ModelConfig
from llmlab.train.loop import train

PROMPTS = ("Return the", "This module provides", "Raises ValueError if", "The default")
VOCAB_SIZE = 4096
SEQ_LEN = 128
BATCH_SIZE = 8
STEPS = 250
LEARNING_RATE = 1.5e-3
WARMUP_STEPS = 20
HELD_OUT_FRACTION = 0.05
EVAL_BATCHES = 8


def say(text: str) -> None:
    """Print a line at once, so that it lands in order with the progress bar on stderr."""
    print(text, flush=True)


def demo_model_config(tokenizer) -> ModelConfig:
    """The demo's model: LLaMA-style (RMSNorm, RoPE, SwiGLU, no biases, tied embeddings), about 4M parameters."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    return ModelConfig(
        arch="decoder", vocab_size=tokenizer.get_vocab_size(), d_model=256, n_layers=4, n_heads=4, n_kv_heads=4,
        d_ff=688, max_seq_len=256, norm="rmsnorm", position="rope", mlp="swiglu", qkv_bias=False, out_bias=False,
        mlp_bias=False, tie_embeddings=True, bos_token_id=end_of_text, eos_token_id=end_of_text,
        pad_token_id=tokenizer.token_to_id(PAD),
    )  # fmt: skip


def tokenize_documents(tokenizer, texts: list[str]) -> torch.Tensor:
    """Encode texts into one 1-D stream of token ids, each document followed by <|endoftext|>."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(end_of_text)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, seed: int) -> float:
    """Mean loss of model on EVAL_BATCHES fixed random windows of the held-out tokens."""
    was_training = model.training
    model.eval()
    batches = random_batches(tokens, BATCH_SIZE, SEQ_LEN, torch.Generator().manual_seed(seed))
    losses = [model(**next(batches)).loss.item() for _ in range(EVAL_BATCHES)]
    model.train(was_training)
    return sum(losses) / len(losses)


@torch.no_grad()
def print_samples(model, tokenizer, generator: torch.Generator, max_new_tokens: int = 40) -> None:
    """Print one sampled continuation of each demo prompt, cut at the first <|endoftext|>."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    was_training = model.training
    model.eval()
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([[end_of_text, *tokenizer.encode(prompt).ids]])
        output = model.generate(
            prompt_ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40, generator=generator
        )
        continuation = output[0, prompt_ids.shape[1] :].tolist()
        if end_of_text in continuation:
            continuation = continuation[: continuation.index(end_of_text)]
        text = prompt + tokenizer.decode(continuation)
        say(f"  > {text!r}")
    model.train(was_training)


def run(steps: int = STEPS, out_dir: str = os.path.join("runs", "demo"), seed: int = 0) -> list[float]:
    """Train the demo model on the bundled corpus, print samples before and after, save it to out_dir; return the losses."""
    started = time.perf_counter()
    say("1. The bundled corpus: docstrings of the Python standard library")
    documents = [document["text"] for document in bundled_documents()]
    say(f"   {len(documents)} documents, {sum(map(len, documents)) / 1e6:.1f}M characters")

    say(f"2. A byte-level BPE tokenizer with {VOCAB_SIZE} tokens, trained on the corpus")
    tokenizer = train_bpe_tokenizer(documents, VOCAB_SIZE)
    tokens = tokenize_documents(tokenizer, documents)
    held_out_size = int(len(tokens) * HELD_OUT_FRACTION)
    train_tokens, held_out_tokens = tokens[:-held_out_size], tokens[-held_out_size:]
    say(f"   {len(train_tokens)} training tokens, {len(held_out_tokens)} held-out tokens")

    torch.manual_seed(seed)
    model = Model(demo_model_config(tokenizer))
    parameter_count = sum(parameter.numel() for parameter in model.parameters())
    say(f"3. A LLaMA-style model with {parameter_count / 1e6:.1f}M parameters; samples before training:")
    sampling_generator = torch.Generator().manual_seed(seed)
    print_samples(model, tokenizer, sampling_generator)
    say(f"   held-out loss {held_out_loss(model, held_out_tokens, seed):.3f}")

    say(f"4. Training for {steps} steps of {BATCH_SIZE}x{SEQ_LEN} tokens")
    batch_generator = torch.Generator().manual_seed(seed)
    batches = random_batches(train_tokens, BATCH_SIZE, SEQ_LEN, batch_generator)
    losses = train(model, batches, steps, LEARNING_RATE, WARMUP_STEPS, generator=batch_generator, description="demo")
    say(f"   training loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10 steps)")
    say(f"   held-out loss {held_out_loss(model, held_out_tokens, seed):.3f}")

    say("5. Samples after training:")
    print_samples(model, tokenizer, sampling_generator)

    save_model(model, tokenizer, out_dir)
    say(f"Done in {time.perf_counter() - started:.0f}s.")
    return losses


def save_model(model: Model, tokenizer, out_dir: str) -> None:
    """Save the model as an llmlab checkpoint with its tokenizer.json in out_dir."""
    llmlab.save(model, out_dir)
    save_tokenizer(tokenizer, out_dir)
    say(f"Saved the model and tokenizer to {out_dir}; load it with llmlab.load({out_dir!r})")
