"""A paged KV cache (vLLM's PagedAttention, Kwon et al., 2023) with prefix caching.

:class:`~llama_from_scratch.kv_cache.KVCache` reserves ``max_seq_len`` positions per sequence up front. A
server does not know how long an answer will be, so a preallocated cache holds mostly nothing: a 200-token
conversation in a 8192-token slot wastes 97% of it, and that waste is what limits how many people can be
served at once. vLLM borrows the operating system's answer, paging:

* the keys and values of every layer live in one pool of fixed-size **blocks** of :data:`BLOCK_SIZE`
  tokens, ``(num_blocks, block_size, n_kv_heads, head_dim)`` per layer;
* a sequence owns a **block table**, the list of its blocks in order: token ``p`` sits in block
  ``table[p // block_size]`` at offset ``p % block_size`` (its *slot*). Blocks come from a **free list** one
  at a time as the sequence grows, so at most ``block_size - 1`` positions per sequence are held unused;
* attention reads the keys and values through the block table (:mod:`.paged_attention`).

**Prefix caching** (vLLM's automatic prefix caching): a full block is named by a hash of its tokens *and of
everything before them* (the hash of the previous block goes into this one's), because its keys and values
depend on the whole prefix. A new sequence whose first blocks hash the same as blocks already in the pool
uses those blocks instead of recomputing them: a shared system prompt is computed once. Blocks are shared
with **reference counts**; a block nobody uses any more keeps its contents and its name, so a later request
may still hit it, and is reused for something else only when the free list is empty, least recently used
first. The hash is SHA-256: with Python's ``hash``, two different prefixes that collide would hand one user
the keys and values of another's conversation.

:class:`BlockAllocator` is the bookkeeping (numbers only, no tensors); :class:`PagedKVCache` adds the
tensors and the per-sequence block tables.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

import torch

BLOCK_SIZE = 16  # tokens per block, vLLM's default: small enough to waste little, large enough to gather fast


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """The name of a full block: SHA-256 of the previous block's name and this block's token ids."""
    digest = hashlib.sha256(parent or b"")
    digest.update(torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
    return digest.digest()


class NoFreeBlocks(RuntimeError):
    """Every block is in use by a running sequence: the scheduler must preempt one (or wait)."""


class BlockAllocator:
    """Hands out block numbers: a free list, reference counts, and the prefix cache's table of named blocks.

    A block is in one of three states: **free** (in the free list, contents meaningless), **in use**
    (reference count > 0), or **cached** (reference count 0 but named: its contents are still valid, it waits
    in least-recently-used order for a hit or for eviction).
    """

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.free: deque[int] = deque(range(num_blocks))
        self.ref_count = [0] * num_blocks
        self.name_of: dict[int, bytes] = {}  # block -> its hash, for full blocks whose contents are known
        self.block_named: dict[bytes, int] = {}  # hash -> block: the prefix cache
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses, oldest first

    @property
    def num_available(self) -> int:
        """Blocks that :meth:`allocate` can hand out now: free ones and cached ones nobody uses."""
        return len(self.free) + len(self.evictable)

    @property
    def num_in_use(self) -> int:
        return self.num_blocks - self.num_available

    @property
    def num_cached(self) -> int:
        """Blocks nobody uses that still hold a named prefix (a later request may hit them)."""
        return len(self.evictable)

    def allocate(self) -> int:
        """A block for new keys and values: a free one, else the least recently used cached one (evicted)."""
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.block_named[self.name_of.pop(block)]
        else:
            raise NoFreeBlocks(f"all {self.num_blocks} KV blocks are in use")
        self.ref_count[block] = 1
        return block

    def lookup(self, name: bytes) -> int | None:
        """The cached block named ``name``, now shared (its reference count + 1), or None: a miss."""
        block = self.block_named.get(name)
        if block is not None:
            self.evictable.pop(block, None)
            self.ref_count[block] += 1
        return block

    def peek(self, name: bytes) -> int | None:
        """The block named ``name`` without taking it (to count what an allocation would need)."""
        return self.block_named.get(name)

    def name(self, block: int, name: bytes) -> None:
        """Record that ``block`` is full and holds the prefix named ``name``, for later requests to share."""
        if self.enable_prefix_caching and name not in self.block_named and block not in self.name_of:
            self.block_named[name] = block
            self.name_of[block] = name

    def release(self, block: int) -> None:
        """One user fewer; at zero a named block waits for a hit (most recently used), any other is free."""
        if self.ref_count[block] <= 0:
            raise ValueError(f"block {block} released more often than it was taken")
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            if block in self.name_of:
                self.evictable[block] = None
            else:
                self.free.append(block)


class PagedKVCache:
    """Every layer's keys and values in blocks, and each sequence's block table.

    ``k[layer]`` and ``v[layer]`` are ``(num_blocks, block_size, n_kv_heads, head_dim)``. Sequences are known
    by any hashable id. Usage, per sequence: :meth:`allocate` its tokens (which says how many of them the
    prefix cache already holds), compute the rest into :meth:`slots`, :meth:`commit` the tokens whose keys
    and values are now stored (so that full blocks get their names), :meth:`append_slot` before each further
    token, :meth:`free` when done or cancelled.
    """

    def __init__(
        self,
        num_blocks: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        block_size: int = BLOCK_SIZE,
        enable_prefix_caching: bool = True,
    ):
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks, enable_prefix_caching)
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.block_tables: dict[Hashable, list[int]] = {}
        self.names: dict[Hashable, list[bytes]] = {}  # the names of each sequence's full, committed blocks

    @classmethod
    def for_model(cls, model, num_blocks: int, **options) -> PagedKVCache:
        """A cache of ``num_blocks`` blocks shaped for ``model``, on its device and in its dtype."""
        c = model.config
        return cls(num_blocks, c.n_layers, c.n_kv_heads, c.head_dim, model.hidden_dtype, model.device, **options)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _prefix_names(self, tokens: Sequence[int]) -> list[bytes]:
        """Names of the full blocks of ``tokens`` that may come from the cache: all but the last token's.

        The last token is always computed, since its logits give the next token; a prompt that fills
        its last block exactly therefore looks up one block fewer.
        """
        names, parent = [], None
        for start in range(0, len(tokens) - 1 - self.block_size + 1, self.block_size):
            parent = block_hash(parent, tokens[start : start + self.block_size])
            names.append(parent)
        return names

    def _cached_prefix(self, tokens: Sequence[int]) -> list[tuple[bytes, int]]:
        """The leading blocks of ``tokens`` the prefix cache holds now, as ``(name, block)``, up to the first miss
        (none without prefix caching). Only looked at (:meth:`BlockAllocator.peek`): nothing is taken."""
        hits = []
        if self.allocator.enable_prefix_caching:
            for name in self._prefix_names(tokens):
                block = self.allocator.peek(name)
                if block is None:
                    break
                hits.append((name, block))
        return hits

    def can_allocate(self, tokens: Sequence[int]) -> bool:
        """Whether :meth:`allocate` would find enough blocks for ``tokens`` now."""
        hits = [block for _, block in self._cached_prefix(tokens)]
        reused_idle = sum(1 for b in hits if b in self.allocator.evictable)  # taking these removes them from reach
        return self.blocks_for(len(tokens)) - len(hits) <= self.allocator.num_available - reused_idle

    def allocate(self, seq_id: Hashable, tokens: Sequence[int]) -> int:
        """Give ``seq_id`` blocks for ``tokens``; returns how many leading tokens the prefix cache already holds.

        Raises :class:`NoFreeBlocks` (and takes nothing) if the pool cannot hold them: check :meth:`can_allocate`.
        """
        if seq_id in self.block_tables:
            raise ValueError(f"sequence {seq_id!r} has blocks already")
        if not self.can_allocate(tokens):
            needed, available = self.blocks_for(len(tokens)), self.allocator.num_available
            raise NoFreeBlocks(f"{needed} blocks needed, {available} available")
        names = [name for name, _ in self._cached_prefix(tokens)]
        table = [self.allocator.lookup(name) for name in names]  # the same blocks, now shared
        cached_tokens = len(table) * self.block_size
        table += [self.allocator.allocate() for _ in range(self.blocks_for(len(tokens)) - len(table))]
        self.block_tables[seq_id], self.names[seq_id] = table, names
        return cached_tokens

    def append_slot(self, seq_id: Hashable, num_tokens: int) -> None:
        """Make room for ``num_tokens`` tokens in all (a new block when the last is full); may raise NoFreeBlocks."""
        table = self.block_tables[seq_id]
        while len(table) < self.blocks_for(num_tokens):
            table.append(self.allocator.allocate())

    def can_append(self, seq_id: Hashable, num_tokens: int) -> bool:
        needed = self.blocks_for(num_tokens) - len(self.block_tables[seq_id])
        return needed <= self.allocator.num_available

    def commit(self, seq_id: Hashable, tokens: Sequence[int]) -> None:
        """The keys and values of ``tokens`` (the sequence so far) are stored: name every newly full block."""
        names, table = self.names[seq_id], self.block_tables[seq_id]
        while (len(names) + 1) * self.block_size <= len(tokens):
            start = len(names) * self.block_size
            names.append(block_hash(names[-1] if names else None, tokens[start : start + self.block_size]))
            self.allocator.name(table[len(names) - 1], names[-1])

    def free(self, seq_id: Hashable) -> None:
        """Return every block of ``seq_id`` (finished, cancelled or preempted).

        Released last block first, so that among the cached blocks a prefix's tail is evicted before its
        head: the head is what other requests share.
        """
        for block in reversed(self.block_tables.pop(seq_id, [])):
            self.allocator.release(block)
        self.names.pop(seq_id, None)

    def slots(self, seq_id: Hashable, start: int, end: int) -> list[int]:
        """Where positions ``start .. end - 1`` of ``seq_id`` sit in the flattened pool: block * block_size + offset."""
        table, size = self.block_tables[seq_id], self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]
