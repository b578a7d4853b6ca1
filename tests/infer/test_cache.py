"""The caches against recomputation without a cache and against dense keys/values kept by hand: dynamic, static,
ragged and paged give the same greedy tokens; the ragged cache stores no padding; the paged cache's sequences keep their own lengths, share blocks and free them."""

import pytest
import torch

from llmlab.errors import CacheFullError, LlmlabError
from llmlab.infer.cache import RaggedCache, StaticCache
from llmlab.infer.generate import generate_ids
from llmlab.infer.paged import BlockAllocator, PagedCache
from llmlab.model import Model, presets
from llmlab.model.attention import AttentionSpec

# rotary decoder, ALiBi, encoder-decoder, prefix decoder, sliding-window layers (16 slots)
FAMILIES = ["llama", "bloom", "t5", "prefix_llama", "gpt_neo"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    torch.manual_seed(0)
    return Model(presets.get(request.param, "tiny")).eval()


def tiny(name: str) -> Model:
    torch.manual_seed(0)
    return Model(presets.get(name, "tiny")).eval()


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 1000, (1, length), generator=torch.Generator().manual_seed(seed))


# --- the three caches agree ------------------------------------------------------------------------------------------

def test_greedy_tokens_equal_across_caches_for_a_left_padded_batch(model):
    ids = torch.randint(3, 1000, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0  # prompts of 7, 4 and 2 tokens
    options = dict(max_new_tokens=20, ignore_eos=True)  # 7 + 20 slots: the paged cache crosses a 16-token block
    reference = generate_ids(model, ids, mask, use_cache=False, **options)
    for cache in ("dynamic", "static", "ragged", "paged"):
        assert torch.equal(generate_ids(model, ids, mask, cache=cache, **options), reference), cache


def test_a_static_cache_shows_attention_its_longest_rows_slots_unless_its_shapes_are_fixed():
    for fixed, seen in ((False, 6), (True, 16)):
        cache = StaticCache(1, 2, 1, 4, capacity=16, fixed_shapes=fixed)
        cache.lengths = torch.tensor([3, 5])
        slots, key_count = cache.slots(1, torch.device("cpu"))
        keys, values = cache.update(0, slots, torch.ones(2, 1, 1, 4), torch.full((2, 1, 1, 4), 2.0))
        assert slots.tolist() == [[3], [5]] and key_count == seen and keys.shape == values.shape == (2, 1, seen, 4)
        assert keys[0, 0, 3].tolist() == [1.0] * 4 and values[1, 0, 5].tolist() == [2.0] * 4


def test_a_ragged_cache_stores_each_prompt_without_its_padding_and_attends_row_by_row():
    from llmlab.infer.generate import DecodeState

    model = tiny("llama")
    ids = torch.randint(3, 1000, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # prompts of 2, 7 and 4 tokens
    mask[2, :3] = 0
    with torch.no_grad():
        state = DecodeState(model, ids, mask, 5, cache="ragged")
        first = state.logits()
    cache = state.cache
    assert cache.capacities == [2 + 5, 7 + 5, 4 + 5] and cache.row_lengths == [2, 7, 4]
    assert cache.keys[0].shape[1] == sum(cache.capacities)
    for row, length in enumerate((2, 7, 4)):  # each row's region holds exactly what that prompt alone writes
        alone = StaticCache.for_model(model, 1, 12)
        with torch.no_grad():
            hidden, _ = model.hidden(model.prepare(ids[row:row + 1, 7 - length:], cache=alone))
        start = cache.offsets[row]
        torch.testing.assert_close(cache.keys[1][:, start:start + length], alone.keys[1][0, :, :length])
        torch.testing.assert_close(first[row], model.logits(hidden, -1)[0], atol=1e-5, rtol=1e-5)
    cache.select([1])
    cache.slots(5, torch.device("cpu"))
    with pytest.raises(CacheFullError, match="Row 1 of the ragged cache holds 12 slots; 7 are written"):
        cache.slots(6, torch.device("cpu"))


def test_a_ragged_cache_gives_rows_of_one_length_one_strided_view(model):
    ids = torch.randint(3, 1000, (3, 6), generator=torch.Generator().manual_seed(3))  # no padding
    options = dict(max_new_tokens=12, ignore_eos=True)
    reference = generate_ids(model, ids, None, use_cache=False, **options)
    assert torch.equal(generate_ids(model, ids, None, cache="ragged", **options), reference)
    cache = RaggedCache(1, [8, 8], 2, 2)
    slots, _ = cache.slots(3, torch.device("cpu"))
    keys, _ = cache.update(0, slots, torch.arange(24.0).view(2, 2, 3, 2), torch.zeros(2, 2, 3, 2))
    assert isinstance(keys, torch.Tensor) and keys.shape == (2, 2, 3, 2)
    assert keys.tolist() == torch.arange(24.0).view(2, 2, 3, 2).tolist()


def test_a_ragged_cache_attends_a_mask_that_is_not_left_padding_as_given():
    model = tiny("llama")
    ids = torch.randint(3, 1000, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: the pads stay in the cache, masked, as in the dynamic cache
    options = dict(max_new_tokens=5, ignore_eos=True)
    assert torch.equal(generate_ids(model, ids, mask, cache="ragged", **options),
                       generate_ids(model, ids, mask, cache="dynamic", **options))


def test_unknown_cache_kind_is_one_sentence():
    with pytest.raises(LlmlabError, match="paged"):
        generate_ids(tiny("llama"), prompt(3, 0), cache="pages")


# --- the paged cache: sequences of their own lengths -----------------------------------------------------------------

@torch.no_grad()
def step(model, cache, seq_ids, ids, memory=None, prefix=None):
    """One forward call over the sequences seq_ids (rows of ids) through the paged cache; the greedy next tokens."""
    cache.set_batch(seq_ids)
    inputs = model.prepare(ids, prefix_lengths=prefix, cache=cache)
    memory, padding = memory if memory is not None else (None, None)
    hidden, _ = model.hidden(inputs, memory, padding)
    return model.logits(hidden, -1).argmax(-1)


def alone(model, ids, new_tokens):
    """The greedy continuation of one unpadded sequence recomputed without a cache (decoder ids for T5)."""
    return generate_ids(model, ids, None, new_tokens, use_cache=False, ignore_eos=True)[0]


class Sequence:
    """A sequence decoded through a shared paged cache: its tokens so far and, for T5, its encoder output."""

    def __init__(self, model, cache, seq_id, ids):
        self.model, self.id, self.ids = model, seq_id, ids[0]
        cache.add_sequence(seq_id)
        encoder_decoder = model.config.arch == "encoder_decoder"
        with torch.no_grad():
            self.memory = model.encode(ids)[0] if encoder_decoder else None
        self.tokens = ids.new_tensor([model.config.decoder_start_token_id]) if encoder_decoder else ids[0]
        prefix = torch.tensor([ids.shape[1]]) if model.config.arch == "prefix_decoder" else None
        memory = None if self.memory is None else (self.memory, None)
        self.push(step(model, cache, [seq_id], self.tokens[None], memory, prefix))

    def push(self, token):
        self.tokens = torch.cat([self.tokens, token])


def decode_together(model, cache, sequences, steps):
    memory = None
    if sequences[0].memory is not None:  # encoder outputs of different lengths: right-padded, masked
        longest = max(s.memory.shape[1] for s in sequences)
        memory = (torch.cat([torch.nn.functional.pad(s.memory, (0, 0, 0, longest - s.memory.shape[1]))
                             for s in sequences]),
                  torch.tensor([[1] * s.memory.shape[1] + [0] * (longest - s.memory.shape[1]) for s in sequences]))
    for _ in range(steps):
        last = torch.stack([s.tokens[-1:] for s in sequences])
        for sequence, token in zip(sequences, step(model, cache, [s.id for s in sequences], last, memory)):
            sequence.push(token[None])


def test_sequences_started_at_different_times_decode_together(model):
    cache = PagedCache.for_model(model, num_blocks=8, block_size=4)
    a = Sequence(model, cache, "a", prompt(5, 2))
    decode_together(model, cache, [a], 3)
    b = Sequence(model, cache, "b", prompt(9, 3))  # prefilled alone while a waits
    decode_together(model, cache, [a, b], 6)
    assert cache.lengths == {"a": len(a.tokens) - 1, "b": len(b.tokens) - 1}  # the newest token is not yet written
    for sequence, new in ((a, 10), (b, 7)):
        expected = alone(model, sequence.ids[None], new)
        assert torch.equal(sequence.tokens, expected), sequence.id


def test_block_boundaries_are_crossed_by_sequences_of_1_to_13_tokens():
    model = tiny("llama")
    cache = PagedCache.for_model(model, num_blocks=64, block_size=4)
    sequences = [Sequence(model, cache, length, prompt(length, length)) for length in range(1, 14)]
    assert [len(cache.block_tables[s.id]) for s in sequences] == [-(-length // 4) for length in range(1, 14)]
    decode_together(model, cache, sequences, 5)
    for length, sequence in zip(range(1, 14), sequences):
        assert torch.equal(sequence.tokens, alone(model, sequence.ids[None], 6)), length
    used = sum(-(-cache.lengths[s.id] // 4) for s in sequences)
    assert cache.num_free_blocks == 64 - used
    for sequence in sequences:
        cache.free_sequence(sequence.id)
    assert cache.num_free_blocks == 64 and not cache.block_tables


def test_a_row_sees_no_slot_beyond_its_own_length():
    # rows padded to the longest: slot 3.. of the first row (query slot 2) lie beyond every query of that row
    spec = AttentionSpec(query_index=torch.tensor([[1, 2], [4, 5]]), key_count=6, causal=True)
    expected = torch.tensor([[[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]],
                             [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(spec.allowed()[:, 0], expected)


# --- the paged cache against dense keys kept by hand -----------------------------------------------------------------

LAYERS, HEADS, HEAD_DIM = 2, 2, 3


class Dense:
    """The reference: each sequence's keys and values per layer, concatenated as they are written."""

    def __init__(self):
        self.kv = {}

    def write(self, seq_id, layer, keys, values):
        old = self.kv.get((seq_id, layer), (keys[:, :0], values[:, :0]))
        self.kv[seq_id, layer] = (torch.cat([old[0], keys], 1), torch.cat([old[1], values], 1))

    def fork(self, parent, child, length):
        for layer in range(LAYERS):
            keys, values = self.kv[parent, layer]
            self.kv[child, layer] = (keys[:, :length], values[:, :length])


def write(cache, dense, seq_ids, new, generator):
    """One step writing new random tokens to each of seq_ids in every layer; checks what update returns."""
    cache.set_batch(seq_ids)
    slots, key_count = cache.slots(new, torch.device("cpu"))
    lengths = [cache.lengths[s] for s in seq_ids]
    assert slots.tolist() == [list(range(n, n + new)) for n in lengths]
    assert key_count == max(lengths) + new
    for layer in range(LAYERS):
        keys = torch.randn(len(seq_ids), HEADS, new, HEAD_DIM, generator=generator)
        values = torch.randn(len(seq_ids), HEADS, new, HEAD_DIM, generator=generator)
        got_keys, got_values = cache.update(layer, slots, keys, values)
        assert got_keys.shape == (len(seq_ids), HEADS, key_count, HEAD_DIM)
        for row, seq_id in enumerate(seq_ids):
            dense.write(seq_id, layer, keys[row], values[row])
            want_keys, want_values = dense.kv[seq_id, layer]
            assert torch.equal(got_keys[row, :, :lengths[row] + new], want_keys)
            assert torch.equal(got_values[row, :, :lengths[row] + new], want_values)
    cache.advance(new)


def check_blocks(cache, dense):
    """Every sequence's tokens lie in its blocks [heads, size, head_dim] in order: slot s in block table[s // size] at
    offset s % size."""
    size = cache.block_size
    for seq_id, length in cache.lengths.items():
        table = cache.block_tables[seq_id]
        assert len(table) == -(-length // size)
        for layer in range(LAYERS):
            for store, want in zip((cache.keys[layer], cache.values[layer]), dense.kv[seq_id, layer]):
                stored = torch.cat([store[block] for block in table], dim=1)[:, :length]  # [heads, length, head_dim]
                assert torch.equal(stored, want)


def test_gather_equals_dense_keys_built_by_hand():
    cache, dense, generator = PagedCache(LAYERS, HEADS, HEAD_DIM, num_blocks=20, block_size=4), Dense(), \
        torch.Generator().manual_seed(0)
    for seq_id in "abc":
        cache.add_sequence(seq_id)
    write(cache, dense, ["a"], 6, generator)
    write(cache, dense, ["b", "c"], 3, generator)
    write(cache, dense, ["c", "a", "b"], 1, generator)  # rows in any order, of lengths 4, 7 and 4
    for _ in range(5):
        write(cache, dense, ["a", "c"], 1, generator)
    write(cache, dense, ["b"], 9, generator)
    check_blocks(cache, dense)
    assert cache.lengths == {"a": 12, "b": 13, "c": 9}


def test_forked_sequences_share_blocks_and_copy_the_partial_one_on_write():
    cache, dense, generator = PagedCache(LAYERS, HEADS, HEAD_DIM, num_blocks=10, block_size=4), Dense(), \
        torch.Generator().manual_seed(1)
    cache.add_sequence("parent")
    write(cache, dense, ["parent"], 6, generator)  # one full block, one half full
    full, partial = cache.block_tables["parent"]
    cache.fork_sequence("parent", "child")
    dense.fork("parent", "child", 6)
    cache.fork_sequence("parent", "prefix", length=4)  # a cached prompt prefix: the full block only
    dense.fork("parent", "prefix", 4)
    assert cache.block_tables["child"] == [full, partial] and cache.block_tables["prefix"] == [full]
    alloc = cache.allocator
    assert (alloc.ref_count(full), alloc.ref_count(partial), cache.num_free_blocks) == (3, 2, 8)
    assert cache.blocks_needed(1, ["parent", "child"]) == 1  # one of the two writers copies, the other keeps it
    write(cache, dense, ["child", "parent"], 1, generator)
    assert cache.block_tables["child"][0] == full and cache.block_tables["child"][1] != partial
    assert cache.block_tables["parent"] == [full, partial] and alloc.ref_count(partial) == 1
    write(cache, dense, ["prefix"], 3, generator)  # starts a block of its own: nothing to copy
    write(cache, dense, ["parent", "child", "prefix"], 2, generator)
    check_blocks(cache, dense)
    assert alloc.ref_count(full) == 3
    for seq_id in ("parent", "child", "prefix"):
        cache.free_sequence(seq_id)
    assert cache.num_free_blocks == 10 and alloc.ref_count(full) == 0


def test_a_cached_prefix_outlives_its_sequence_and_starts_another():
    cache, dense, generator = PagedCache(LAYERS, HEADS, HEAD_DIM, num_blocks=6, block_size=4), Dense(), \
        torch.Generator().manual_seed(4)
    cache.add_sequence("first")
    write(cache, dense, ["first"], 10, generator)
    prefix = cache.allocator.fork(cache.block_tables["first"][:2])  # a prefix cache keeps the two full blocks
    cache.free_sequence("first")
    assert cache.num_free_blocks == 4 and [cache.allocator.ref_count(b) for b in prefix] == [1, 1]
    cache.add_sequence("second", prefix)
    dense.fork("first", "second", 8)
    assert cache.lengths["second"] == 8 and [cache.allocator.ref_count(b) for b in prefix] == [2, 2]
    write(cache, dense, ["second"], 3, generator)
    check_blocks(cache, dense)
    with pytest.raises(ValueError):
        cache.add_sequence("third", prefix, length=3)  # 3 tokens fill one block, not two


def test_reorder_forks_rows_taken_twice_and_frees_rows_dropped():
    cache, dense, generator = PagedCache(LAYERS, HEADS, HEAD_DIM, num_blocks=12, block_size=4), Dense(), \
        torch.Generator().manual_seed(2)
    for seq_id in range(3):
        cache.add_sequence(seq_id)
    write(cache, dense, [0, 1, 2], 5, generator)
    cache.reorder(torch.tensor([2, 0, 2]))  # beam search: row 1 dropped, row 2 taken twice
    assert cache.batch == [2, 0, 1] and sorted(cache.lengths) == [0, 1, 2]
    dense.fork(2, 1, 5)
    assert cache.num_free_blocks == 12 - 4 and cache.allocator.ref_count(cache.block_tables[2][0]) == 2
    write(cache, dense, cache.batch, 4, generator)
    check_blocks(cache, dense)


# --- the allocator ---------------------------------------------------------------------------------------------------

def test_block_allocator_counts_references_and_returns_freed_blocks():
    allocator = BlockAllocator(num_blocks=4, block_size=16)
    first = allocator.allocate(3)
    assert len(set(first)) == 3 and allocator.num_free == 1
    assert allocator.fork(first[:2]) == first[:2]
    assert [allocator.ref_count(b) for b in first] == [2, 2, 1]
    allocator.free(first)
    assert [allocator.ref_count(b) for b in first] == [1, 1, 0] and allocator.num_free == 2
    allocator.free(first[:2])
    assert allocator.num_free == 4 and sorted(allocator.allocate(4)) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        BlockAllocator(4, 16).free([0])  # a block nobody holds


def test_running_out_of_blocks_is_one_sentence_naming_the_pool_and_changes_nothing():
    cache, dense, generator = PagedCache(LAYERS, HEADS, HEAD_DIM, num_blocks=3, block_size=4), Dense(), \
        torch.Generator().manual_seed(3)
    for seq_id in "ab":
        cache.add_sequence(seq_id)
    write(cache, dense, ["a"], 5, generator)
    tables = {s: list(t) for s, t in cache.block_tables.items()}
    cache.set_batch(["a", "b"])
    with pytest.raises(CacheFullError) as error:
        cache.slots(4, torch.device("cpu"))  # a needs one more block, b two; one is free
    message = str(error.value)
    assert isinstance(error.value, LlmlabError) and message.endswith(".") and "\n" not in message
    assert "3 blocks of 4 tokens" in message, message
    assert cache.block_tables == tables and cache.num_free_blocks == 1
    write(cache, dense, ["b"], 4, generator)  # what fits still does
    check_blocks(cache, dense)


def test_registered_blocks_stay_findable_when_free_until_the_pool_needs_them():
    allocator = BlockAllocator(num_blocks=4, block_size=2)
    a, b, c = allocator.allocate(3)
    allocator.register(a, "key-a")
    allocator.register(b, "key-b")
    allocator.register(c, "key-a")  # a key keeps its first block
    assert allocator.lookup("key-a") == a and allocator.num_cached == 2
    allocator.free([b, a, c])
    assert allocator.num_free == 4 and allocator.lookup("key-b") == b
    assert allocator.fork([a]) == [a] and allocator.ref_count(a) == 1 and allocator.num_free == 3  # taken back
    # never-registered blocks go first (c, then the fourth), then registered ones, least recently freed first (b)
    assert sorted(allocator.allocate(2)) == sorted([c, 3])
    assert allocator.allocate(1) == [b] and allocator.lookup("key-b") is None
    allocator.free([b])
    with pytest.raises(ValueError, match="free"):
        allocator.register(b, "key-b")


def test_a_decode_batch_keeps_its_gathered_keys_and_matches_recomputation(model):
    cache = PagedCache.for_model(model, num_blocks=64, block_size=4)
    a, b, c = (Sequence(model, cache, name, prompt(length, seed)) for name, length, seed in
               (("a", 5, 2), ("b", 9, 3), ("c", 4, 6)))
    decode_together(model, cache, [a, b, c], 2)
    mirror = cache._mirror  # built by the first one-token step of the batch (rows for 4), then written to in place
    decode_together(model, cache, [a, b, c], 3)
    assert cache._mirror is mirror and mirror.batch == ["a", "b", "c"]
    assert mirror.lengths == [cache.lengths[name] for name in "abc"]
    d = Sequence(model, cache, "d", prompt(3, 4))  # a prefill of another sequence leaves the mirror alone
    assert cache._mirror is mirror and cache.decode_order(["d", "c", "b", "a"]) == ["a", "b", "c", "d"]
    decode_together(model, cache, [a, b, c, d], 4)  # d joins: only its keys are gathered, into a row of its own
    assert cache._mirror is mirror and mirror.batch == ["a", "b", "c", "d"]
    cache.free_sequence("a")  # a leaves: the last row moves into its place
    assert cache._mirror is mirror and cache.decode_order(["b", "c", "d"]) == ["d", "b", "c"]
    decode_together(model, cache, [d, b, c], 3)
    assert cache._mirror is mirror and mirror.batch == ["d", "b", "c"]
    a2 = Sequence(model, cache, "a", prompt(6, 5))  # the freed id started anew is gathered anew, not taken as "a"
    assert cache.decode_order(["a", "b", "c", "d"]) == ["d", "b", "c", "a"]
    decode_together(model, cache, [d, b, c, a2], 4)
    assert cache._mirror is mirror
    for sequence, new in ((a, 10), (b, 17), (c, 17), (d, 12), (a2, 5)):
        assert torch.equal(sequence.tokens, alone(model, sequence.ids[None], new)), sequence.id
