"""The mixture sampler: Megatron's blend, epochs that visit every window once, held-out windows kept apart,
and the window of sample i a pure function of (sources, seed, i)."""

from collections import Counter

import numpy as np
import pytest

from llmlab.data.mixture import Mixture, MixtureSource, blend
from llmlab.data.shards import TokenArray, TokenShards, token_dtype, write_index, write_shard
from llmlab.errors import ConfigError, DataError

SEQ = 4


def source(windows: int, offset: int, **options) -> MixtureSource:
    """A stream whose window w holds offset + w in every token, so a sample names its source and window."""
    tokens = np.repeat(np.arange(offset, offset + windows), SEQ)
    return MixtureSource(TokenArray(tokens), name=f"s{offset}", **options)


def windows_of(mixture: Mixture, count: int) -> list[int]:
    rows = mixture.samples(0, count)
    assert (rows == rows[:, :1]).all()  # whole windows, never straddling two
    return rows[:, 0].tolist()


def test_the_blend_by_hand():
    # ½ | ¼ ¼: the root sends sample j left when round((j+1)/2) > round(j/2), i.e. every other sample from the first;
    # the right node alternates its two sources the same way
    sources, ordinals = blend([0.5, 0.25, 0.25], np.arange(8))
    assert sources.tolist() == [0, 1, 0, 2, 0, 1, 0, 2]
    assert ordinals.tolist() == [0, 0, 1, 0, 2, 1, 3, 1]
    # ¾ | ¼: round((j+1)·¾) − round(j·¾) is 1, 1, 0, 1 for j = 0..3 (round half up), then repeats
    sources, ordinals = blend([0.75, 0.25], np.arange(8))
    assert sources.tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    assert ordinals.tolist() == [0, 1, 0, 2, 3, 4, 1, 5]


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.01, 0.99), (0.5, 0.2, 0.3), (1, 1, 1, 5), (3, 1, 4, 1, 5, 9, 2, 6)])
def test_realised_shares_match_the_weights_within_half_a_sample_per_level_at_every_prefix(weights):
    shares = np.array(weights) / sum(weights)
    sources, ordinals = blend(list(shares), np.arange(5000))
    counts = np.cumsum(np.eye(len(weights))[sources], axis=0)
    levels = int(np.ceil(np.log2(len(weights))))  # two sources: one level, so within rounding
    assert np.abs(counts - shares * np.arange(1, 5001)[:, None]).max() <= 0.5 * levels + 1e-9
    for source in range(len(weights)):  # each source's samples take its ordinals 0, 1, 2, ... in order
        assert ordinals[sources == source].tolist() == list(range(int(counts[-1, source])))


def test_any_sample_is_found_without_the_ones_before_it():
    weights = [0.2, 0.5, 0.3]
    far = np.array([10**12, 10**12 + 1, 7 * 10**11 + 3])
    sources, ordinals = blend(weights, far)
    everything = blend(weights, np.arange(1000))
    assert [blend(weights, np.array([i]))[0][0] for i in (5, 999)] == everything[0][[5, 999]].tolist()
    assert (np.abs(ordinals - np.array(weights)[sources] * far) < 1.5).all()


def test_weighted_sources_are_sampled_in_proportion():
    mixture = Mixture([source(10, 0, weight=3), source(10, 100, weight=1)], SEQ, seed=0)
    counts = Counter(window >= 100 for window in windows_of(mixture, 40))
    assert counts == {False: 30, True: 10}


def test_epochs_weigh_by_size_and_visit_every_window_once_per_epoch():
    # 6 windows once and 4 windows twice: weights 6 : 8, so 14 samples are exactly the two passes
    mixture = Mixture([source(6, 0, epochs=1), source(4, 100, epochs=2)], SEQ, seed=3)
    assert mixture.weights == pytest.approx([6 / 14, 8 / 14])
    assert sorted(windows_of(mixture, 14)) == sorted([*range(6), *range(100, 104), *range(100, 104)])
    single = Mixture([source(7, 0)], SEQ, seed=1)
    drawn = windows_of(single, 21)
    assert [sorted(drawn[e * 7:(e + 1) * 7]) for e in range(3)] == [list(range(7))] * 3
    assert drawn[:7] != drawn[7:14]  # a new order every epoch


def test_sample_i_is_the_same_in_every_instance_whatever_was_read_before():
    sources = [source(50, 0, weight=0.6), source(30, 100, weight=0.4)]
    first = Mixture(sources, SEQ, seed=7, held_out_fraction=0.1)
    everything = first.samples(0, 300)
    resumed = Mixture(sources, SEQ, seed=7, held_out_fraction=0.1)  # a fresh process resuming at sample 250
    assert np.array_equal(resumed.samples(250, 300), everything[250:])
    assert np.array_equal(resumed.sample(3), everything[3])
    other_seed = Mixture(sources, SEQ, seed=8, held_out_fraction=0.1)
    assert not np.array_equal(other_seed.samples(0, 300), everything)


def test_held_out_windows_are_the_last_of_each_source_and_never_trained_on():
    sources = [source(20, 0, weight=1), source(10, 100, weight=1)]
    train = set(windows_of(Mixture(sources, SEQ, held_out_fraction=0.2), 200))
    held_out = set(windows_of(Mixture(sources, SEQ, held_out_fraction=0.2, split="held_out"), 50))
    assert held_out == {16, 17, 18, 19, 108, 109}
    assert train == set(range(16)) | set(range(100, 108))


def test_a_held_out_split_of_another_length_starts_after_the_training_windows():
    # 100 tokens, 10% held out: training windows of 4 cover tokens 0..87 (22 of 25 windows); the last 10% of windows
    # of 6 would start at window 14 (token 84), inside them; after the training split, the first is window 15 (90)
    stream = MixtureSource(TokenArray(np.arange(100)), name="tokens")
    plain = Mixture([stream], 6, held_out_fraction=0.1, split="held_out")
    after = Mixture([stream], 6, held_out_fraction=0.1, split="held_out", split_seq_len=4)
    assert plain.samples(0, 2)[:, 0].tolist() in ([84, 90], [90, 84])  # the overlap this option removes
    assert len(after) == 1 and after.samples(0, 1).tolist() == [list(range(90, 96))]
    same_length = Mixture([stream], 4, held_out_fraction=0.1, split="held_out", split_seq_len=4)
    assert sorted(same_length.samples(0, 3)[:, 0].tolist()) == [88, 92, 96]  # the split as before


def test_windows_cross_document_and_shard_boundaries_of_real_shards(tmp_path):
    dtype = token_dtype(100)
    entries = [write_shard(tmp_path, "a", [[1, 2, 3], [4]], dtype, 0),
               write_shard(tmp_path, "b", [[5, 6, 7]], dtype, 0)]
    write_index(tmp_path, entries, 100, 0)
    mixture = Mixture([MixtureSource(TokenShards(tmp_path))], seq_len=3)
    # the stream 1 2 3 0 | 4 0 || 5 6 7 0 in windows of 3: the last token is left over
    assert sorted(map(tuple, mixture.samples(0, 3).tolist())) == [(0, 4, 0), (1, 2, 3), (5, 6, 7)]


@pytest.mark.parametrize(
    ("sources", "error", "named"),
    [
        ([source(4, 0, weight=1), source(4, 100, epochs=1)], ConfigError, "weight"),
        ([source(4, 0, weight=1), source(4, 100)], ConfigError, "s100"),
        ([source(4, 0, weight=0)], ConfigError, "s0"),
        ([source(1, 0)], DataError, "s0"),
    ],
)
def test_bad_sources_are_refused_by_name(sources, error, named):
    with pytest.raises(error, match=named):
        Mixture(sources, SEQ, held_out_fraction=0.5)


def test_a_source_kept_out_of_the_held_out_split_trains_on_every_window():
    from llmlab.data.mixture import TokenPrefix

    fresh = source(20, 0, weight=0.5)
    repeated = MixtureSource(TokenPrefix(fresh.stream, 3 * SEQ), weight=0.5, name="first 3", held_out=False)
    mixture = Mixture([fresh, repeated], SEQ, held_out_fraction=0.2)
    held_out = set(windows_of(Mixture([fresh, repeated], SEQ, held_out_fraction=0.2, split="held_out"), 40))
    assert held_out == {16, 17, 18, 19}  # the fresh source's tail only
    assert set(windows_of(mixture, 200)) == set(range(16))
    located = mixture.locate(0, 200)
    assert Counter(source for source, _ in located) == {0: 100, 1: 100}
    # 100 samples of the repeated source: 33 epochs over its 3 windows and one more window
    assert sorted(Counter(window for source, window in located if source == 1).values()) == [33, 33, 34]
    with pytest.raises(DataError, match="prefix of 100 tokens"):
        TokenPrefix(fresh.stream, 100)
