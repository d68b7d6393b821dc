"""Chapter 15's exercises (serving): a block table that grows from a free list, its slots, and admission.

The learner's functions work on plain lists, the bookkeeping of :class:`~..serving.PagedKVCache` and
:meth:`~..serving.Scheduler.admit` without tensors or sequences. Each check compares with the package's own
objects run on the same numbers (a ``PagedKVCache`` of one tiny layer, a ``Scheduler`` over it) and, when
the answer differs, names the catalogued mistake below that gives what the learner got.
"""

from __future__ import annotations

from collections.abc import Callable

from ..serving.paged_kv_cache import PagedKVCache
from ..serving.sampling_params import SamplingParams
from ..serving.scheduler import Scheduler, Sequence
from .feedback import Case, Mistake, as_list, check_cases

# --- the common wrong answers ---------------------------------------------------------------------


def _append_slot(table, free, num_tokens, block_size, blocks="ceil", take="front", keep=True):
    table, free = list(table), list(free)
    needed = num_tokens // block_size if blocks == "floor" else -(-num_tokens // block_size)
    if blocks == "one":  # one more block at every call
        needed = len(table) + 1
    if not keep:  # a fresh set of blocks on top of the ones the table has
        needed += len(table)
    while len(table) < needed:
        table.append(free.pop(0) if take == "front" else free.pop())
    return table, free


APPEND_SLOT = [
    Mistake(
        "looks like the blocks are counted with floor division:\n"
        "num_tokens tokens need ceil(num_tokens / block_size) blocks:\n-(-num_tokens // block_size)",
        lambda t, f, n, b: _append_slot(t, f, n, b, blocks="floor"),
    ),
    Mistake(
        "looks like a block is added at every call:\n"
        "add one only while the table holds fewer than ceil(num_tokens / block_size) blocks",
        lambda t, f, n, b: _append_slot(t, f, n, b, blocks="one"),
    ),
    Mistake(
        "looks like the table's own blocks are not counted:\n"
        "the table already holds len(table) blocks; add only the missing ones",
        lambda t, f, n, b: _append_slot(t, f, n, b, keep=False),
    ),
    Mistake(
        "looks like the blocks are taken from the end of the free list:\ntake them from its front, free.pop(0)",
        lambda t, f, n, b: _append_slot(t, f, n, b, take="end"),
    ),
]


def _slots(table, start, end, block_size, mistake=None):
    positions = range(start, end + 1 if mistake == "inclusive" else end)
    if mistake == "contiguous":
        return list(positions)
    if mistake == "unscaled":
        return [table[p // block_size] + p % block_size for p in positions]
    return [table[p // block_size] * block_size + p % block_size for p in positions]


SLOTS = [
    Mistake(
        "looks like the block table is not used:\n"
        "position p sits in block table[p // block_size], wherever that block is in the pool",
        lambda t, s, e, b: _slots(t, s, e, b, "contiguous"),
    ),
    Mistake(
        "looks like the block number is not multiplied by block_size:\n"
        "block k starts at slot k * block_size of the flattened pool",
        lambda t, s, e, b: _slots(t, s, e, b, "unscaled"),
    ),
    Mistake(
        "looks like position end is included:\nthe slots are those of positions start … end − 1",
        lambda t, s, e, b: _slots(t, s, e, b, "inclusive"),
    ),
]


def _admit(waiting, free_blocks, num_running, max_num_seqs, max_batched_tokens, block_size, mistake=None):
    budget = max_batched_tokens - (0 if mistake == "budget" else num_running)
    admitted, running = 0, num_running
    for length in waiting:
        needed = length // block_size if mistake == "floor" else -(-length // block_size)
        fits = needed <= free_blocks and length <= budget and (running < max_num_seqs or mistake == "seats")
        if not fits:
            if mistake == "skip":
                continue
            break
        free_blocks, budget, running, admitted = free_blocks - needed, budget - length, running + 1, admitted + 1
    return admitted


ADMIT = [
    Mistake(
        "looks like a request that does not fit is skipped and later ones admitted:\n"
        "the first that does not fit stops admission (first come, first served)",
        lambda *a: _admit(*a, mistake="skip"),
    ),
    Mistake(
        "looks like max_num_seqs is not checked:\n"
        "admit only while the running sequences (new ones included)\nare fewer than max_num_seqs",
        lambda *a: _admit(*a, mistake="seats"),
    ),
    Mistake(
        "looks like the running sequences are left out of the token budget:\n"
        "each running sequence adds one token to the step:\nstart from max_batched_tokens − num_running",
        lambda *a: _admit(*a, mistake="budget"),
    ),
    Mistake(
        "looks like the blocks are counted with floor division:\n"
        "a prompt of n tokens needs ceil(n / block_size) blocks",
        lambda *a: _admit(*a, mistake="floor"),
    ),
]


# --- the package's answers, from its own objects ---------------------------------------------------


def _pool(num_blocks: int, block_size: int) -> PagedKVCache:
    return PagedKVCache(num_blocks, 1, 1, 1, block_size=block_size, enable_prefix_caching=False)


def package_append_slot(table, free, num_tokens, block_size):
    """What ``PagedKVCache.append_slot`` does to a table and a free list."""
    cache = _pool(max([*table, *free], default=0) + 1, block_size)
    cache.allocator.free.clear()
    cache.allocator.free.extend(free)
    cache.block_tables["s"] = list(table)
    cache.append_slot("s", num_tokens)
    return cache.block_tables["s"], list(cache.allocator.free)


def package_slots(table, start, end, block_size):
    cache = _pool(max(table) + 1, block_size)
    cache.block_tables["s"] = list(table)
    return cache.slots("s", start, end)


def package_admit(waiting, free_blocks, num_running, max_num_seqs, max_batched_tokens, block_size):
    """How many of ``waiting`` (prompt lengths) ``Scheduler.admit`` starts, with ``num_running`` running."""
    scheduler = Scheduler(_pool(free_blocks, block_size), max_num_seqs, max_batched_tokens)
    scheduler.running = [None] * num_running  # only their number matters to admission
    for i, length in enumerate(waiting):
        scheduler.add(Sequence(i, [1] * length, SamplingParams()))
    scheduler.admit(max_batched_tokens - num_running)
    return len(scheduler.running) - num_running


# --- the checks -----------------------------------------------------------------------------------


def check_append_slot(fn: Callable) -> None:
    """``fn(table, free, num_tokens, block_size)``: blocks from the front of ``free`` onto ``table`` until it holds
    ``num_tokens`` tokens; returns ``(table, free)`` afterwards."""
    cases = [
        ([], [3, 0, 5, 1], 1, 16),
        ([], [3, 0, 5, 1], 16, 16),
        ([7], [2, 4, 6], 17, 16),
        ([7], [2, 4], 16, 16),
        ([], [3, 0, 5, 1], 17, 16),
        ([7], [2, 4], 17, 16),
        ([7, 2], [4, 9, 1], 40, 16),
        ([], [6, 2, 8, 0], 10, 4),
        ([5, 1], [0, 3], 9, 4),
    ]
    cases = [
        Case(f"my_append_slot({t}, {f}, num_tokens={n}, block_size={b})", (t, f, n, b), package_append_slot(t, f, n, b))
        for t, f, n, b in cases
    ]
    check_cases("append slot", "my_append_slot", fn, cases, mistakes=APPEND_SLOT,
                convert=lambda got: tuple(as_list(x) for x in got) if isinstance(got, tuple) else got)


def check_slots(fn: Callable) -> None:
    """``fn(table, start, end, block_size)``: the pool slots of positions ``start … end − 1``."""
    cases = [([4, 1, 7], 0, 5, 4), ([4, 1, 7], 3, 9, 4), ([2, 0], 14, 18, 16), ([5], 0, 1, 16), ([3, 8, 1, 6], 10, 16, 4)]
    cases = [
        Case(f"my_slots({t}, start={s}, end={e}, block_size={b})", (t, s, e, b), package_slots(t, s, e, b))
        for t, s, e, b in cases
    ]
    check_cases("slots", "my_slots", fn, cases, mistakes=SLOTS, convert=as_list)


def check_admit(fn: Callable) -> None:
    """``fn(waiting, free_blocks, num_running, max_num_seqs, max_batched_tokens, block_size)``: how many of the
    waiting prompts (their lengths, first come first) start in this step."""
    cases = [
        ([10, 20, 5], 10, 0, 8, 512, 16),   # all fit
        ([40, 10], 2, 0, 8, 512, 16),       # the first needs 3 blocks of 2: nothing starts, not even the second
        ([10, 10, 10], 10, 1, 2, 512, 16),  # one seat left
        ([30, 30], 10, 4, 8, 62, 16),       # budget 62 - 4 = 58: both fit only if the running are forgotten
        ([32, 16], 3, 0, 8, 512, 16),       # 32 tokens need exactly 2 blocks, 16 one
        ([17, 1], 1, 0, 8, 512, 16),        # 17 tokens need 2 blocks, not 1
        ([100, 3], 20, 0, 8, 64, 16),       # over the budget: stops there
        ([5, 6, 7], 10, 0, 8, 512, 4),
    ]
    cases = [Case(f"my_admit{args}", args, package_admit(*args)) for args in cases]
    check_cases("admit", "my_admit", fn, cases, mistakes=ADMIT)
