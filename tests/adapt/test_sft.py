"""Packing and the SFT batches: best-fit decreasing on a hand-worked case, the loss of a packed batch equal to the
same examples' loss unpacked (padded, and each alone) in float32, and batches that resume where they stopped."""

import pytest
import torch

from llmlab.adapt.packing import best_fit_decreasing, pack, pad
from llmlab.adapt.sft import ExampleBatches, stack_rows
from llmlab.model import Model, presets
from llmlab.objectives.losses import IGNORE_INDEX, language_model_loss


def test_best_fit_decreasing_by_hand():
    # lengths 5 4 3 3 2 1 into 8: 5 opens A (3 left), 4 opens B (4 left), 3 fills A exactly, 3 goes to B (1 left),
    # 2 opens C, 1 fits B best (its 1 left) rather than C (6 left)
    assert best_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    with pytest.raises(ValueError):
        best_fit_decreasing([9], 8)


def examples(generator, vocab=64):
    """Prompt-and-reply examples of several lengths: the first half of each unlabelled."""
    found = []
    for length in (7, 12, 5, 9, 3, 14, 6):
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2:]
        found.append((ids, labels))
    return found


def test_packed_loss_equals_unpacked_loss():
    torch.manual_seed(0)
    model = Model(presets.llama("tiny", vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                max_seq_len=64, init_std=0.2)).eval()  # sharp enough that leaks show
    data = examples(torch.Generator().manual_seed(1))
    packed = pack(data, 16, pad_id=0)
    assert packed["input_ids"].shape[0] < len(data)  # several examples share rows
    with torch.no_grad():
        summed, count, _ = language_model_loss(model, packed)
        padded_sum, padded_count, _ = language_model_loss(model, pad(data, pad_id=0))
        alone = [language_model_loss(model, pad([example], pad_id=0)) for example in data]
    alone_sum, alone_count = sum(float(s) for s, _, _ in alone), sum(int(c) for _, c, _ in alone)
    assert int(count) == int(padded_count) == alone_count == sum(len(ids) - len(ids) // 2 for ids, _ in data)
    assert float(summed) / int(count) == pytest.approx(alone_sum / alone_count, abs=1e-5)
    assert float(padded_sum) / int(padded_count) == pytest.approx(alone_sum / alone_count, abs=1e-5)


def test_packed_rows_have_a_document_each_and_padding_apart():
    packed = pack([([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5])], 6, pad_id=0)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0]]
    assert packed["document_ids"].tolist() == [[0, 0, 0, 1, 1, 2]]
    assert packed["labels"].tolist() == [[-100, 2, 3, -100, 5, -100]]


def test_padding_is_right_padding_without_labels():
    batch = pad([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batches_resume_exactly_and_visit_every_row_each_epoch():
    rows = [{"input_ids": torch.tensor(index)} for index in range(5)]
    batches = ExampleBatches(rows, stack_rows, batch_size=2, seed=0)
    seen = [next(batches)["input_ids"].tolist() for _ in range(5)]  # 10 rows: two epochs
    flat = [row for batch in seen for row in batch]
    assert sorted(flat[:5]) == sorted(flat[5:]) == list(range(5))
    resumed = ExampleBatches(rows, stack_rows, batch_size=2, seed=0)
    resumed.load_state_dict({"step": 3})
    assert [next(resumed)["input_ids"].tolist() for _ in range(2)] == seen[3:]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_the_sft_loss_falls_on_a_tiny_model(packed):
    from functools import partial

    from llmlab.train.loop import TrainConfig, Trainer

    torch.manual_seed(0)
    model = Model(presets.llama("tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32))
    data = examples(torch.Generator().manual_seed(1))
    if packed:
        rows = pack(data, 16, pad_id=0)
        rows = [{name: value[row] for name, value in rows.items()} for row in range(len(rows["input_ids"]))]
        batches = ExampleBatches(rows, stack_rows, batch_size=4, seed=0)
    else:
        batches = ExampleBatches(data, partial(pad, pad_id=0), batch_size=4, seed=0)
    loss = partial(language_model_loss, labelled_logits_only=True)
    losses = Trainer(model, TrainConfig(steps=40, lr=1e-2, warmup=2), batches, progress=False, loss_fn=loss).fit()
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5  # the replies are memorised
