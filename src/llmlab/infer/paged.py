"""The paged key/value cache (Kwon et al. 2023, vLLM's PagedAttention) behind the model's Cache protocol.

One preallocated tensor holds every layer's keys and values as fixed-size blocks; each sequence owns a block table
(the blocks its tokens live in, in order) and a length of its own. A reference-counted allocator hands blocks out, so
that sequences can share them (beam forks now, cached prompt prefixes later); a shared block that is about to be
written is copied first (copy-on-write). The engine's scheduler adds and removes sequences while others decode, and
before each forward call chooses the sequences that form its rows:

    cache.add_sequence("a")          # an empty sequence
    cache.set_batch(["a"])           # rows of the next forward call
    model.hidden(model.prepare(prompt_a, cache=cache))   # prefill: slots 0..len-1 of "a"
    cache.add_sequence("b"); cache.set_batch(["b"]); ...  # prefill "b" alone
    cache.set_batch(["a", "b"])      # then decode both, each row from its own length
    cache.free_sequence("a")         # finished: its blocks return to the pool
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.errors import CacheFullError

SeqId = Hashable


class BlockAllocator:
    """The free blocks of a pool and a reference count per block, so that sequences can share blocks.

    Prefix caching: a full block may be registered under a key of its contents and of everything before it. A
    registered block that nobody holds any more keeps its contents and can be found by its key and taken again, until
    the pool runs out of never-registered blocks and hands it out anew (least recently freed first)."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"A block pool needs at least one block of one token, not {num_blocks} × {block_size}.")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: the lowest-numbered block is handed out first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # registered blocks nobody holds, oldest first
        self._refs = [0] * num_blocks
        self._key_of: dict[int, Hashable] = {}
        self._block_of: dict[Hashable, int] = {}

    @property
    def num_free(self) -> int:
        """How many blocks no sequence holds (registered ones that may still be found by their key included)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """How many blocks are registered under a key (held or not)."""
        return len(self._key_of)

    def can_allocate(self, count: int) -> bool:
        """Whether count blocks are free."""
        return count <= self.num_free

    def check(self, count: int) -> None:
        """Raise CacheFullError, naming the pool's size, unless count blocks are free."""
        if count > self.num_free:
            raise CacheFullError(f"The paged cache is full: {count} more blocks are needed but only {self.num_free} "
                                 f"of its {self.num_blocks} blocks of {self.block_size} tokens are free.")

    def allocate(self, count: int) -> list[int]:
        """Take count free blocks (each with one reference), registered ones last; CacheFullError when fewer are
        free."""
        self.check(count)
        blocks = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._key_of.pop(block)]
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def fork(self, blocks: Iterable[int]) -> list[int]:
        """Share blocks with one more holder (a forked or prefix-sharing sequence): one more reference each; a
        registered block nobody held is taken back from the free blocks."""
        blocks = list(blocks)
        for block in blocks:
            if self._refs[block] == 0:
                if block not in self._evictable:
                    raise ValueError(f"Block {block} is free and cannot be shared.")
                del self._evictable[block]
            self._refs[block] += 1
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference to each block; a block nobody holds returns to the pool (kept findable when
        registered)."""
        for block in blocks:
            if self._refs[block] == 0:
                raise ValueError(f"Block {block} is already free.")
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._key_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    def ref_count(self, block: int) -> int:
        """How many sequences hold the block (0: free)."""
        return self._refs[block]

    def register(self, block: int, key: Hashable) -> None:
        """Make a full, held block findable by key (its tokens and its prefix's); a key or block already registered
        keeps its first registration."""
        if self._refs[block] == 0:
            raise ValueError(f"Block {block} is free; only a held block can be registered.")
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key], self._key_of[block] = block, key

    def lookup(self, key: Hashable) -> int | None:
        """The block registered under key, held or not, if the pool still has it."""
        return self._block_of.get(key)


@dataclass
class _Mirror:
    """One-token batches' keys/values gathered once, per layer [2, rows, kv_heads, capacity, head_dim]: row i holds
    batch[i]'s first lengths[i] slots (its later slots stale but finite, and masked). A freed sequence's row holds a
    placeholder, so that its id, started anew, is gathered anew."""

    batch: list
    lengths: list
    capacity: int
    layers: list

    @property
    def rows(self) -> int:
        """The rows allocated."""
        return self.layers[0].shape[1] if self.layers and self.layers[0] is not None else 0


@dataclass
class _MirrorPlan:
    """How a one-token step uses the mirror: "append" to it as it is, "patch" it (rows moved into the rows of
    sequences that left, sequences that joined gathered into rows of their own) or "build" it anew."""

    kind: str
    moves: tuple[list[int], list[int]] = ([], [])  # (from rows, to rows)
    joined: int = 0  # the batch's last rows to gather from the pool
    capacity: int = 0  # a new mirror's slots and rows
    rows: int = 0


class PagedCache:
    """Keys and values in a pool of blocks [num_blocks, kv_heads, block_size, head_dim] per layer (views of one
    tensor), found through per-sequence block tables; the rows of a forward call are the sequences set_batch chose."""

    contiguous = False  # attention sees key_count slots per row; a shorter row's extra slots are masked causally

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        # one tensor: per layer, keys then values, each [num_blocks, kv_heads, block_size, head_dim], so that a gather
        # of (block, head) rows gives attention's [batch, kv_heads, keys, head_dim] with each head's keys contiguous
        self.pool = torch.zeros(n_layers, 2, num_blocks, kv_heads, block_size, head_dim, dtype=dtype, device=device)
        self.keys = [self.pool[layer, 0] for layer in range(n_layers)]  # per-layer views
        self.values = [self.pool[layer, 1] for layer in range(n_layers)]
        self.block_tables: dict[SeqId, list[int]] = {}
        self.lengths: dict[SeqId, int] = {}  # tokens written per sequence
        self.batch: list[SeqId] = []
        self._cross: dict[SeqId, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}
        self._cross_batch: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self._version = 0  # bumped whenever a batch row's block table changes
        self._table: tuple | None = None  # ((version, width), the batch's table, its gather rows)
        self._step: tuple | None = None  # (write blocks, write offsets, gather rows, key_count, slots, mirror plan)
        # one-token batches' keys/values as gathered, kept across steps: a decode step writes its token there too
        # instead of gathering every row again, and a batch that changed gathers only the sequences that joined it
        self._mirror: _Mirror | None = None

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16, dtype: torch.dtype | None = None) -> "PagedCache":
        """A pool of num_blocks blocks sized for model's decoder layers and attention heads."""
        config = model.config
        layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
        dtype = dtype or next(model.parameters()).dtype
        return cls(layers, config.kv_heads, config.dim_head, num_blocks, block_size, dtype, model.device)

    @property
    def num_blocks(self) -> int:
        """The pool's size in blocks."""
        return self.allocator.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds."""
        return self.allocator.num_free

    # --- sequences: the scheduler's side -------------------------------------------------------------------------

    def add_sequence(self, seq_id: SeqId, blocks: Sequence[int] = (), length: int | None = None) -> None:
        """Start a sequence: empty, or made of blocks already written (a cached prompt prefix: the sequence takes a
        reference to each) holding its first length tokens (all of theirs by default)."""
        if seq_id in self.lengths:
            raise ValueError(f"Sequence {seq_id!r} is already in the cache.")
        length = len(blocks) * self.block_size if length is None else length
        if self._blocks_for(length) != len(blocks):
            raise ValueError(f"{length} tokens fill {self._blocks_for(length)} blocks of {self.block_size}, "
                             f"not {len(blocks)}.")
        self.block_tables[seq_id], self.lengths[seq_id] = self.allocator.fork(blocks), length
        self._cross[seq_id] = [None] * len(self.keys)

    def fork_sequence(self, parent: SeqId, child: SeqId, length: int | None = None) -> None:
        """Start child as the first length tokens of parent (all of them by default), sharing parent's blocks; a
        shared block is copied only when one of them writes to it."""
        length = self.lengths[parent] if length is None else length
        if not 0 <= length <= self.lengths[parent]:
            raise ValueError(f"Sequence {parent!r} has {self.lengths[parent]} tokens, not {length}.")
        self.add_sequence(child, self.block_tables[parent][:self._blocks_for(length)], length)
        self._cross[child] = list(self._cross[parent])

    def free_sequence(self, seq_id: SeqId) -> None:
        """Forget a sequence: its blocks lose a reference (and return to the pool when nobody else holds them), last
        block first, so that a prefix cache gives up a prompt's tail before its head."""
        self.allocator.free(reversed(self.block_tables.pop(seq_id)))
        if self._mirror is not None and seq_id in self._mirror.batch:
            self._mirror.batch[self._mirror.batch.index(seq_id)] = object()  # never equal to a sequence id
        del self.lengths[seq_id], self._cross[seq_id]
        if seq_id in self.batch:
            self.set_batch([s for s in self.batch if s != seq_id])

    def set_batch(self, seq_ids: Sequence[SeqId]) -> None:
        """Choose the sequences that form the rows of the next forward calls, in this order."""
        seq_ids = list(seq_ids)
        unknown = [s for s in seq_ids if s not in self.lengths]
        if unknown or len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"A batch needs distinct sequences of the cache; got {seq_ids!r}.")
        if seq_ids != self.batch:
            self.batch = seq_ids
            self._cross_batch = [None] * len(self.keys)
            self._version += 1
        self._step = None

    def blocks_needed(self, new_tokens: int, seq_ids: Sequence[SeqId] | None = None) -> int:
        """How many free blocks writing new_tokens more to each of seq_ids (the batch) takes, copies-on-write
        included: a scheduler's admission check before the step (compare with num_free_blocks)."""
        seq_ids = self.batch if seq_ids is None else seq_ids
        grow = sum(max(self._blocks_for(self.lengths[s] + new_tokens) - len(self.block_tables[s]), 0)
                   for s in seq_ids)
        writers = Counter(self._partial_block(s) for s in seq_ids if new_tokens > 0)
        writers.pop(None, None)
        # c rows of the batch writing into a block that r sequences hold: all c copy unless they are all its holders
        copies = sum(c if self.allocator.ref_count(b) > c else c - 1 for b, c in writers.items())
        return grow + copies

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _partial_block(self, seq_id: SeqId) -> int | None:
        """The shared, partly filled last block the sequence writes next, if any."""
        length = self.lengths[seq_id]
        if length % self.block_size == 0:
            return None
        block = self.block_tables[seq_id][length // self.block_size]
        return block if self.allocator.ref_count(block) > 1 else None

    def _reserve(self, new_tokens: int) -> None:
        """Give every row blocks for new_tokens more tokens, copying shared blocks it will write (all or nothing)."""
        needed = self.blocks_needed(new_tokens)
        if not needed:
            return
        self.allocator.check(needed)  # before anything changes: all or nothing
        copies_from, copies_to = [], []
        for seq_id in self.batch:
            table = self.block_tables[seq_id]
            shared = self._partial_block(seq_id) if new_tokens else None
            if shared is not None:
                (fresh,) = self.allocator.allocate(1)
                copies_from.append(shared)
                copies_to.append(fresh)
                self.allocator.free([shared])
                table[self.lengths[seq_id] // self.block_size] = fresh
            grow = self._blocks_for(self.lengths[seq_id] + new_tokens) - len(table)
            if grow > 0:
                table.extend(self.allocator.allocate(grow))
        if copies_from:  # every layer's keys and values of those blocks in one copy
            self.pool[:, :, copies_to] = self.pool[:, :, copies_from]
        self._version += 1

    def decode_order(self, seq_ids: Sequence[SeqId]) -> list[SeqId]:
        """seq_ids in the order a one-token step over them copies least: the mirror's rows that are still valid where
        they are (the last ones moved into the rows of sequences that left), then the others."""
        return self._rows_after(seq_ids)[0]

    def _rows_after(self, seq_ids: Sequence[SeqId]) -> tuple[list[SeqId], tuple[list[int], list[int]], int]:
        """(the order of seq_ids, the row moves that bring the mirror to it, how many rows at its end are new)."""
        mirror, wanted = self._mirror, set(seq_ids)
        if mirror is None:
            return list(seq_ids), ([], []), len(seq_ids)
        rows = [s if s in wanted and self.lengths.get(s) == length else None
                for s, length in zip(mirror.batch, mirror.lengths)]
        sources, targets = [], []
        while rows and rows[-1] is None:
            rows.pop()
        for row in range(len(rows)):
            if row < len(rows) and rows[row] is None:  # the last valid row fills the hole
                sources.append(len(rows) - 1)
                targets.append(row)
                rows[row] = rows.pop()
                while rows and rows[-1] is None:
                    rows.pop()
        kept = set(rows)
        joining = [s for s in seq_ids if s not in kept]
        return rows + joining, (sources, targets), len(joining)

    def _batch_table(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's block tables as one tensor [batch, width], rows padded with block 0 (masked causally), and the
        pool rows (block × kv_heads + head) to gather, in attention's order [batch, kv_heads, blocks]."""
        key = (self._version, width)
        if self._table is None or self._table[0] != key:
            table = torch.tensor([(self.block_tables[s] + [0] * width)[:width] for s in self.batch],
                                 dtype=torch.long, device=self.pool.device)
            heads = self.pool.shape[3]
            rows = table[:, None, :] * heads + torch.arange(heads, device=table.device)[:, None]
            self._table = (key, table, rows.flatten())
        return self._table[1], self._table[2]

    # --- the model's Cache protocol ----------------------------------------------------------------------------

    def slots(self, new_tokens: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Each row's next new_tokens slots (its own length on), allocating their blocks; attention sees the longest
        row's length after the step."""
        if not self.batch:
            raise ValueError("PagedCache.set_batch must choose the rows before a forward call.")
        self._reserve(new_tokens)
        lengths = [self.lengths[s] for s in self.batch]
        key_count = max(lengths) + new_tokens
        table, rows = self._batch_table(self._blocks_for(key_count))
        slots = torch.tensor(lengths, device=device)[:, None] + torch.arange(new_tokens, device=device)
        on_pool = slots.to(table.device)
        blocks = table.gather(1, on_pool // self.block_size).flatten()  # each new token's block and offset in it
        self._step = (blocks, (on_pool % self.block_size).flatten(), rows, key_count, slots,
                      self._mirror_use(new_tokens, key_count))
        return slots, key_count

    def _mirror_use(self, new_tokens: int, key_count: int) -> _MirrorPlan | None:
        """How this step uses the mirror: none for a step of several tokens or of a batch that shares no sequence
        with the mirror's; "append" or "patch" when the batch is in decode_order and fits the mirror's rows and
        capacity; else "build" with room to grow, where that fits in the pool's size (a mirror takes no more memory
        than the pool)."""
        if new_tokens != 1:
            return None
        mirror, batch = self._mirror, list(self.batch)
        if mirror is not None:
            valid = [s for s, length in zip(mirror.batch, mirror.lengths) if self.lengths.get(s) == length]
            if valid and set(valid).isdisjoint(batch):
                return None  # another batch's step (an encoder-decoder's start tokens): the mirror waits for its own
            order, moves, joined = self._rows_after(batch)
            if order == batch and key_count <= mirror.capacity and len(batch) <= mirror.rows:
                if not joined and not moves[0]:
                    return _MirrorPlan("append")
                return _MirrorPlan("patch", moves, joined)
        pool_tokens = self.num_blocks * self.block_size
        grown = 1 << (len(batch) - 1).bit_length()  # room for the batch to grow, in powers of two
        for capacity, rows in ((2 * key_count, grown), (key_count, grown), (key_count, len(batch))):
            capacity = -(-(capacity + 4 * self.block_size) // self.block_size) * self.block_size
            if rows * capacity <= pool_tokens:
                return _MirrorPlan("build", capacity=capacity, rows=rows)
        return None

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values [batch, kv_heads, new, head_dim] at the slots slots() gave (positions) into the rows'
        blocks; return the rows' keys/values [batch, kv_heads, key_count, head_dim] gathered through their tables."""
        blocks, offsets, rows, key_count, slots, plan = self._step
        pool = self.pool[layer]  # [2, num_blocks, kv_heads, block_size, head_dim]
        batch, heads, _, dim = keys.shape
        new = torch.stack([keys, values], 2).transpose(1, 3).reshape(-1, 2, heads, dim)  # [batch × new, 2, heads, dim]
        pool[:, blocks, :, offsets] = new.to(pool.dtype)
        flat = pool.view(2, -1, pool.shape[3] * dim)  # (block, head) rows: a gather of them gives contiguous keys
        if plan is not None and plan.kind != "build":
            mirrored = self._mirror.layers[layer]  # [2, rows, heads, capacity, dim]
            sources, targets = plan.moves
            if sources:
                mirrored[:, targets] = mirrored[:, sources]
            if plan.joined:  # their (block, head) rows are the last of the batch's, in the order [batch, heads, blocks]
                gathered = flat.index_select(1, rows[-plan.joined * heads * (rows.numel() // (batch * heads)):])
                gathered = gathered.view(2, plan.joined, heads, -1, dim)[:, :, :, :key_count]
                mirrored[:, batch - plan.joined:batch, :, :gathered.shape[3]] = gathered
            index = slots.to(pool.device)[:, None, :, None].expand(batch, heads, -1, dim)
            mirrored[0, :batch].scatter_(2, index, keys.to(pool.dtype))
            mirrored[1, :batch].scatter_(2, index, values.to(pool.dtype))
            return mirrored[0, :batch, :, :key_count], mirrored[1, :batch, :, :key_count]
        gathered = flat.index_select(1, rows).view(2, batch, heads, -1, dim)
        if plan is not None:  # build
            if layer == 0:
                self._mirror = _Mirror(list(self.batch), [self.lengths[s] for s in self.batch], plan.capacity,
                                       [None] * len(self.keys))
            mirrored = gathered.new_zeros(2, plan.rows, heads, plan.capacity, dim)
            mirrored[:, :batch, :, :key_count] = gathered[:, :, :, :key_count]
            self._mirror.layers[layer] = mirrored
        return gathered[0, :, :, :key_count], gathered[1, :, :, :key_count]

    def advance(self, new_tokens: int) -> None:
        """Every row has written new_tokens more slots."""
        for seq_id in self.batch:
            self.lengths[seq_id] += new_tokens
        if self._step is not None and self._step[5] is not None:  # the mirror's first rows are now the batch
            self._mirror.batch[:len(self.batch)] = self.batch
            self._mirror.lengths[:len(self.batch)] = [self.lengths[s] for s in self.batch]
            del self._mirror.batch[len(self.batch):], self._mirror.lengths[len(self.batch):]
        self._step = None

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's cross-attention keys/values of a layer once every row has them (encoders' lengths padded)."""
        if self._cross_batch[layer] is None:
            rows = [self._cross[s][layer] for s in self.batch]
            if not rows or any(row is None for row in rows):
                return None
            longest = max(k.shape[1] for k, _ in rows)

            def stack(tensors):
                return torch.stack([F.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tensors])

            self._cross_batch[layer] = (stack([k for k, _ in rows]), stack([v for _, v in rows]))
        return self._cross_batch[layer]

    def set_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the batch's cross-attention keys/values [batch, kv_heads, source, head_dim] of a layer, per row."""
        for row, seq_id in enumerate(self.batch):
            self._cross[seq_id][layer] = (keys[row], values[row])
        self._cross_batch[layer] = (keys, values)

    def reorder(self, index: torch.Tensor) -> None:
        """Make row i the old row index[i] (beam search, finished rows): a row taken twice is forked (its blocks
        shared, copied on write) under a new integer id; rows not taken are freed. The new rows are self.batch."""
        rows = [self.batch[row] for row in index.tolist()]
        for seq_id in set(self.batch) - set(rows):
            self.free_sequence(seq_id)
        taken = set()
        for i, seq_id in enumerate(rows):
            if seq_id in taken:
                rows[i] = next(n for n in range(len(self.lengths) + 1) if n not in self.lengths)
                self.fork_sequence(seq_id, rows[i])
            taken.add(rows[i])
        self.set_batch(rows)
