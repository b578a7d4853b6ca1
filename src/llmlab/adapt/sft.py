"""Supervised fine-tuning (survey §5.1, instruction tuning): the language-model loss on the replies only — every
assistant turn of a conversation, each with its end-of-turn token — over examples packed into windows (each
attending only to itself) or padded one per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from llmlab.adapt.method import FinetuneContext, MethodParts
from llmlab.adapt.packing import Example, pack, pad
from llmlab.errors import ConfigError, DataError
from llmlab.objectives.losses import IGNORE_INDEX, language_model_loss
from llmlab.train import distributed
from llmlab.train.data import StepIndexed, step_generator
from llmlab.train.distributed import rank_rows

PARAMETERS = {
    "pack": True,  # best-fit decreasing into windows of seq_len; false: one right-padded example per row
    "seq_len": None,  # the window (and longest example); None: the model's max_seq_len
    "batch_size": 8,  # rows per step
}


def conversation_example(encode: Callable, prompt, response: str) -> Example:
    """(ids, labels) with every assistant turn of a chat prompt labelled as well as the response: each earlier turn
    is encoded as the reply to the turns before it, which must be how the whole conversation begins."""
    ids, labels = encode(prompt, response)
    labels = list(labels)
    if isinstance(prompt, Sequence) and not isinstance(prompt, str):
        for index, message in enumerate(prompt):
            if message["role"] != "assistant":
                continue
            turn_ids, turn_labels = encode(prompt[:index], message["content"])
            if list(ids[:len(turn_ids)]) != list(turn_ids):
                raise ConfigError("the template tokenises an earlier assistant turn differently once later turns "
                                  "follow, so the conversation's replies cannot all be labelled.")
            labels[:len(turn_ids)] = [new if new != IGNORE_INDEX else old
                                      for old, new in zip(labels[:len(turn_ids)], turn_labels)]
    return list(ids), labels


def tokenize(context: FinetuneContext, records: list[dict], seq_len: int, encode_text: Callable | None
             ) -> tuple[list[Example], int]:
    """(examples, how many were longer than seq_len and left out); plain text is cut into seq_len pieces."""
    examples, too_long = [], 0
    for record in records:
        if "text" in record and "response" not in record:
            ids, labels = encode_text(record["text"])
            examples += [(ids[start:start + seq_len], labels[start:start + seq_len])
                         for start in range(0, len(ids), seq_len)]
            continue
        if "response" not in record:
            raise ConfigError("the sft method trains on replies (alpaca, prompt_completion or messages data), "
                              f"not on records with fields {', '.join(sorted(record))}.")
        ids, labels = conversation_example(context.encode, record["prompt"], record["response"])
        if len(ids) > seq_len:
            too_long += 1
        else:
            examples.append((ids, labels))
    return examples, too_long


def plain_text_encoder(context: FinetuneContext) -> Callable:
    """(ids, labels) of plain text: BOS, its tokens and EOS, every one labelled."""
    bos, eos = context.model.config.bos_token_id, context.model.config.eos_token_id

    def encode_text(text: str) -> Example:
        ids = ([bos] if bos is not None else []) + context.tokenizer.encode(text, add_special_tokens=False).ids
        ids.append(eos)
        return ids, list(ids)

    return encode_text


class ExampleBatches(StepIndexed):
    """Batches by step: rows in a fresh seeded order each epoch (a function of seed and epoch), batch_size rows per
    step, collated by collate (this rank's share of them under torchrun); the position is the step, so that resuming
    continues exactly."""

    def __init__(self, rows: list, collate: Callable[[list], dict], batch_size: int, seed: int):
        if not rows:
            raise DataError("no training example fits the window; raise method.seq_len or shorten the examples.")
        self.rows, self.collate, self.batch_size, self.seed = rows, collate, batch_size, seed
        self.step, self._orders = 0, {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.rows), generator=step_generator(self.seed, epoch)).tolist()}
        return self._orders[epoch]

    def batch(self, step: int) -> dict:
        """The batch of step."""
        picked = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, index = divmod(position, len(self.rows))
            picked.append(self.rows[self._order(epoch)[index]])
        return rank_rows(self.collate(picked), distributed.rank(), distributed.world_size())


def stack_rows(rows: list[dict]) -> dict:
    """Packed rows (dicts of [seq_len] tensors) as one batch."""
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def build(context: FinetuneContext) -> MethodParts:
    """The SFT loss (language_model_loss on the reply labels, document ids passed to the model) and its batches."""
    params, config = context.params, context.model.config
    seq_len = params["seq_len"] or config.max_seq_len
    if seq_len < 2 or params["batch_size"] < 1:
        raise ConfigError(f"method.seq_len ({seq_len}) must be at least 2 and method.batch_size at least 1.")
    pad_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    encode_text = plain_text_encoder(context)
    examples, too_long = tokenize(context, context.examples, seq_len, encode_text)
    held_out, _ = tokenize(context, context.held_out, seq_len, encode_text)
    notes = [f"left out {too_long} training examples longer than method.seq_len {seq_len}"] if too_long else []
    if params["pack"]:
        packed = pack(examples, seq_len, pad_id) if examples else {"input_ids": []}
        rows = [{name: value[row] for name, value in packed.items()} for row in range(len(packed["input_ids"]))]
        batches = ExampleBatches(rows, stack_rows, params["batch_size"], context.seed)
        notes.append(f"packed {len(examples)} examples into {len(rows)} windows of {seq_len} tokens")
        held = pack(held_out, seq_len, pad_id) if held_out else None
        held_batches = [{name: value[start:start + params["batch_size"]] for name, value in held.items()}
                        for start in range(0, len(held["input_ids"]), params["batch_size"])] if held else []
    else:
        batches = ExampleBatches(examples, partial(pad, pad_id=pad_id), params["batch_size"], context.seed)
        held_batches = [pad(held_out[start:start + params["batch_size"]], pad_id)
                        for start in range(0, len(held_out), params["batch_size"])]
    loss_fn = partial(language_model_loss, z_loss_weight=context.train.z_loss, labelled_logits_only=True)
    return MethodParts(loss_fn=loss_fn, batches=batches, held_out=held_batches[:context.train.eval_batches] or None,
                       notes=notes)
