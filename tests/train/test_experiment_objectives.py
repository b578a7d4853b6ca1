"""Experiment 5's continuation probe: its continuation loss against log-softmax worked out by hand for causal, prefix
and encoder-decoder models (in each objective's layout), its zero-shot choice accuracy on a model whose answers are
known, the layouts from a tokenizer's special tokens, and the shipped experiment running every variant."""

import csv
import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model import Model, ModelConfig
from llmlab.train.experiment import Layout, continuation_layout, continuation_probe

VOCAB = 61
EXPERIMENT = Path(__file__).parents[2] / "recipes" / "experiments" / "objectives.yaml"


def tiny(arch: str) -> Model:
    torch.manual_seed(0)
    layers = {"n_layers": 1, "n_decoder_layers": 1} if arch == "encoder_decoder" else {"n_layers": 2}
    return Model(ModelConfig(arch=arch, vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, max_seq_len=32,
                             position="rope", pad_token_id=0, decoder_start_token_id=0, init_std=0.2,
                             **layers)).eval()


def windows(count: int = 6, length: int = 20) -> torch.Tensor:
    return torch.randint(3, VOCAB - 3, (count, length), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def by_hand(model: Model, rows: torch.Tensor, layout: Layout, causal_context: bool = False) -> float:
    """The mean over rows of −log p(second half | first half) per token, from one forward of the whole row and a
    log-softmax: decoders read the layout's context then the lead and continuation (a prefix decoder the context as
    its prefix, unless causal_context), an encoder-decoder the context in the encoder and the rest in the decoder."""
    losses = []
    for row in rows.tolist():
        half = len(row) // 2
        context = [*layout.before, *row[:half], *layout.after]
        target = [*layout.lead, *row[half:]]
        if model.config.arch == "encoder_decoder":
            decoder = torch.tensor([[model.config.decoder_start_token_id, *target[:-1]]])
            logits = model(torch.tensor([context]), decoder_input_ids=decoder).logits[0]
            predicting = range(len(layout.lead), len(target))  # decoder position p predicts target[p]
            picked = [logits.log_softmax(-1)[p, target[p]] for p in predicting]
        else:
            ids = torch.tensor([context + target])
            prefix = None if model.config.arch == "decoder" or causal_context else torch.tensor([len(context)])
            logprobs = model(ids, prefix_lengths=prefix).logits[0].log_softmax(-1)
            first = len(context) + len(layout.lead)  # the continuation's first token
            picked = [logprobs[p - 1, ids[0, p]] for p in range(first, ids.shape[1])]
        losses.append(-float(sum(picked)) / (len(row) - half))
    return sum(losses) / len(losses)


SPAN = Layout(after=(VOCAB - 1, 1), lead=(VOCAB - 1,))  # <extra_id_0> ends the input and opens the target
UL2_S = Layout(before=(VOCAB - 2,), after=(1,))  # [S] leads the input, EOS ends it


@pytest.mark.parametrize("arch, layout", [("decoder", Layout()), ("prefix_decoder", Layout()),
                                          ("encoder_decoder", SPAN), ("encoder_decoder", UL2_S),
                                          ("prefix_decoder", UL2_S)])
def test_the_continuation_loss_is_the_cross_entropy_of_the_second_half_given_the_first(arch, layout):
    model, rows = tiny(arch), windows()
    got = continuation_probe(model, rows, layout)
    assert got["continuation_loss"] == pytest.approx(by_hand(model, rows, layout), rel=1e-5)
    assert 0.0 <= got["choice_acc"] <= 1.0 and 0.0 <= got["choice_acc_norm"] <= 1.0


def test_a_prefix_decoder_reads_the_context_bidirectionally():
    model, rows = tiny("prefix_decoder"), windows()
    got = continuation_probe(model, rows)["continuation_loss"]
    assert got != pytest.approx(by_hand(model, rows, Layout(), causal_context=True), rel=1e-3)


class _Counter(torch.nn.Module):
    """A bigram model that expects counting: after token a, logit 5 on a + 1 (mod the vocabulary), 0 elsewhere."""

    def __init__(self, vocab: int, tokenizer=None):
        super().__init__()
        self.config = SimpleNamespace(arch="decoder", vocab_size=vocab, max_seq_len=32, n_layers=1, position="rope",
                                      attn_window=None)
        self.device, self.tokenizer = torch.device("cpu"), tokenizer
        self.table = torch.zeros(vocab, vocab)
        self.table[torch.arange(vocab), (torch.arange(vocab) + 1) % vocab] = 5.0

    def prepare(self, ids, attention_mask=None, cache=None, prefix_lengths=None, check_ids=True):
        return ids  # a bigram model needs neither positions nor a cache

    def hidden(self, ids, *memory):
        return ids, None

    def logits(self, states):
        return self.table[states]


def test_a_counting_model_picks_every_true_continuation_of_counting_text():
    vocab = 16
    rows = torch.stack([(offset + torch.arange(8)) % vocab for offset in (0, 4, 8, 12)])  # counting from 0, 4, 8, 12
    got = continuation_probe(_Counter(vocab), rows)
    # each continuation token is the expected next one: p = e^5 / (e^5 + 15) per token, for every window
    assert got["continuation_loss"] == pytest.approx(math.log(math.exp(5) + vocab - 1) - 5)
    # the other windows' continuations start with an unexpected token (logit 0): the true one always wins
    assert got["choice_acc"] == 1.0 and got["choice_acc_norm"] == 1.0  # without a tokenizer: per token, as acc


def test_per_character_normalisation_can_prefer_a_long_unlikely_text_as_lm_evals_acc_norm_does():
    vocab = 16
    rows = torch.stack([(offset + torch.arange(8)) % vocab for offset in (0, 4, 8, 12)])
    long = {4, 5, 6, 7}  # the first window's continuation decodes to 100 characters a token, the others' to 1
    tokenizer = SimpleNamespace(decode=lambda ids: "x" * sum(100 if i in long else 1 for i in ids))
    got = continuation_probe(_Counter(vocab, tokenizer), rows)
    # with 4 windows every question offers all other continuations; per character, the long one's log-likelihood
    # (3 expected tokens and 1 unexpected: −5.4 nats over 400 characters) beats any true short one's (−0.39 over 4),
    # so only the first window's question is answered right; by the sum, all four are
    assert got["choice_acc"] == 1.0 and got["choice_acc_norm"] == 0.25


def test_too_few_held_out_windows_for_four_choices_is_one_sentence():
    with pytest.raises(ConfigError, match="needs 4 held-out windows"):
        continuation_probe(_Counter(16), torch.arange(24).reshape(3, 8) % 16)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped experiment file, every variant two steps on a small corpus and model, one seed."""
    from llmlab.train.experiment import load_experiment, run_experiment

    experiment = load_experiment(EXPERIMENT)
    assert len(experiment.seeds) >= 3 and experiment.probes == ["continuation"]
    small = ["data.max_chars=60000", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.steps=2",
             "train.warmup=1", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1",
             "train.checkpoint_every=2"]
    out = tmp_path_factory.mktemp("objectives") / "out"
    rows = run_experiment(dataclasses.replace(experiment, seeds=[0], overrides=small), out, progress=False)
    return experiment, out, rows


def test_every_variant_of_the_shipped_experiment_trains_and_is_probed(shipped):
    import llmlab

    experiment, out, rows = shipped
    assert [row["variant"] for row in rows] == list(experiment.variants)
    written = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [float(row["continuation_loss"]) for row in written] == pytest.approx(
        [row["continuation_loss"] for row in rows])
    for row in rows:
        assert math.isfinite(row["continuation_loss"]) and 0.0 <= row["choice_acc"] <= 1.0
    models = {row["variant"]: llmlab.load(out / row["run"] / "final") for row in rows}
    assert {name: model.config.arch for name, model in models.items()} == {
        "causal-decoder": "decoder", "prefix-decoder": "prefix_decoder", "encdec-span": "encoder_decoder",
        "encdec-ul2": "encoder_decoder"}
    # tokenize_as: one tokenization for all, so the same vocabulary and the same held-out text
    assert [path.name for path in out.glob("data-*")] == ["data-ul2-512-60000"]
    assert len({model.config.vocab_size for model in models.values()}) == 1


def test_the_layouts_use_t5s_first_sentinel_and_ul2s_sequential_mode_token(shipped):
    import llmlab

    _, out, rows = shipped
    model = llmlab.load(out / rows[0]["run"] / "final")
    tokenizer, eos = model.tokenizer, model.config.eos_token_id
    sentinel, mode = tokenizer.token_to_id("<extra_id_0>"), tokenizer.token_to_id("[S]")
    assert continuation_layout("causal", tokenizer, eos) == continuation_layout("prefix_lm", tokenizer, eos) == Layout()
    assert continuation_layout("span_corruption", tokenizer, eos) == Layout(after=(sentinel, eos), lead=(sentinel,))
    assert continuation_layout("ul2", tokenizer, eos) == Layout(before=(mode,), after=(eos,))
    with pytest.raises(ConfigError, match="no layout for models trained on the mlm objective"):
        continuation_layout("mlm", tokenizer, eos)


def test_the_shipped_variants_train_with_equal_flops_per_step(shipped):
    """Equal compute as the experiment claims it: torch's FLOP counter over forward and backward of a training step
    (padding included), the shipped model sizes and batch sizes, mean of 20 steps, within 5% of the causal decoder."""
    from torch.utils.flop_counter import FlopCounterMode

    from llmlab.data.mixture import Mixture
    from llmlab.objectives.losses import language_model_loss
    from llmlab.train.data import StepBatches, open_sources, shard_tokenizer
    from llmlab.train.pretrain import build_model, build_objective
    from llmlab.train.recipe import load_recipe

    experiment, out, _ = shipped
    flops = {}
    for name, overrides in experiment.variants.items():
        recipe = load_recipe(experiment.recipe, [*overrides, f"data.source={out / 'data-ul2-512-60000'}"])
        sources = open_sources(recipe.data)
        tokenizer = shard_tokenizer(sources[0].stream)
        model = build_model(recipe, tokenizer, sources[0].stream)
        mixture = Mixture(sources, recipe.data.seq_len, 0, recipe.data.held_out_fraction)
        batches = StepBatches(mixture, build_objective(recipe, tokenizer, model.config), recipe.data.batch_size)
        counted = []
        for step in range(20):
            with FlopCounterMode(display=False) as counter:
                language_model_loss(model, batches.batch(step))[0].backward()
            counted.append(counter.get_total_flops())
        flops[name] = sum(counted) / len(counted)
    assert {name: value / flops["causal-decoder"] for name, value in flops.items()} == pytest.approx(
        dict.fromkeys(flops, 1.0), abs=0.05)
