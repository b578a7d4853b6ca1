"""Shared tiny fixtures for the adaptation tests: a tiny LLaMA-style llmlab checkpoint with a byte-level BPE tokenizer
and a ChatML chat template, briefly pretrained on synthetic-task text, made once per session (treat it as read-only;
copy it to change it)."""

import json
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.adapt.synthetic import generate_tasks
from llmlab.adapt.templates import ALPACA_PROMPTS
from llmlab.data.packing import sample_batch
from llmlab.data.tokenizer import END_OF_TEXT, PAD, train_tokenizer
from llmlab.model import Model, presets
from llmlab.train.loop import TrainConfig, train

SPECIAL_TOKENS = (END_OF_TEXT, PAD, "<|im_start|>", "<|im_end|>")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TASKS = ("addition", "reverse", "sort", "count_words", "copy", "upper", "lower")  # no corpus lookups: fast


def task_texts(n: int = 300) -> list[str]:
    """Synthetic tasks written out as Alpaca prompts with their answers (the tokenizer's and pretraining's text)."""
    texts = []
    for record in generate_tasks(n, seed=1, tasks=TASKS):
        key = "prompt_input" if record["input"] else "prompt_no_input"
        texts.append(ALPACA_PROMPTS[key].format(**record) + record["output"])
    return texts


def make_checkpoint(directory: Path, pad_is_eos: bool = False, chat_template: str | None = CHATML,
                    steps: int = 20, seed: int = 0, **model_fields) -> Path:
    """Save a tiny LLaMA (d_model 64, 2 layers) pretrained for steps on task text into directory: its tokenizer has
    <|endoftext|> (BOS and EOS), <pad> (the pad id, or EOS when pad_is_eos) and ChatML's tokens; with chat_template,
    tokenizer_config.json holds it with eos_token <|im_end|>."""
    texts = task_texts()
    tokenizer = train_tokenizer(texts, 400, special_tokens=SPECIAL_TOKENS)
    eot = tokenizer.token_to_id(END_OF_TEXT)
    fields = dict(vocab_size=tokenizer.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, d_ff=128,
                  max_seq_len=256, bos_token_id=eot, eos_token_id=eot,
                  pad_token_id=eot if pad_is_eos else tokenizer.token_to_id(PAD), **model_fields)
    torch.manual_seed(seed)
    model = Model(presets.llama("tiny", **fields))
    stream = torch.tensor([token for text in texts for token in [eot, *tokenizer.encode(text).ids]])
    generator = torch.Generator().manual_seed(seed)
    batches = (sample_batch(stream, 8, 48, generator) for _ in range(steps))
    train(model, batches, TrainConfig(steps=steps, lr=3e-3, warmup=0, device="cpu", log_every=steps), progress=False)
    model.tokenizer = tokenizer
    llmlab.save(model, directory)
    if chat_template is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_template,
                                                                     "eos_token": "<|im_end|>"}))
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny pretrained llmlab checkpoint (pad id != EOS) with a ChatML chat template."""
    return make_checkpoint(tmp_path_factory.mktemp("adapt") / "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint_pad_eos(tmp_path_factory) -> Path:
    """The same, with pad id == EOS id (as many published checkpoints)."""
    return make_checkpoint(tmp_path_factory.mktemp("adapt") / "tiny-pad-eos", pad_is_eos=True)
