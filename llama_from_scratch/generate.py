"""Text generation: turn next-token logits into a sequence, one token at a time.

At every step the model gives a score (logit) for each token of the
vocabulary. *Decoding* picks one:

* **greedy** (``temperature=0``): always the highest-scoring token;
  deterministic, and prone to repetition;
* **temperature** ``T``: sample from ``softmax(logits / T)``; ``T < 1``
  sharpens the distribution towards greedy, ``T > 1`` flattens it;
* **top-k**: sample only among the ``k`` best tokens;
* **top-p** (nucleus sampling, Holtzman et al., 2019): sample only among the
  smallest set of best tokens whose probabilities add up to at least ``p``.

One request's settings, how to pick each token and when to stop, are a :class:`GenerationConfig`.
The prompt goes through the model once (:func:`prefill`), filling the KV
cache; each new token then costs one single-token forward pass
(:func:`decode_one_token`). With ``compile=True`` those decode steps run
through :func:`compiled_decode_step`. :func:`generate_batch` decodes several
prompts at once, left-padded to one length (:func:`left_pad`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .errors import is_float32
from .kv_cache import KVCache
from .model import Llama


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token id from ``(vocab_size,)`` logits."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = next_token_probabilities(logits, temperature, top_k, top_p)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def next_token_probabilities(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution that sampling draws from: ``(vocab_size,)`` logits -> ``(vocab_size,)`` probabilities.

    Temperature rescales the logits; top-k and then top-p set the
    probability of every token outside the kept set to exactly zero (:func:`top_p_filter`), and the
    rest is renormalised.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return top_p_filter(probs, top_p) if top_p is not None and top_p < 1.0 else probs


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling's cut: ``(vocab_size,)`` probabilities -> the nucleus's, renormalised.

    The nucleus is the smallest set of most likely tokens whose probabilities add up to at least ``top_p``;
    every other token's probability becomes exactly zero.
    """
    sorted_probs, order = torch.sort(probs, descending=True)
    # Drop a token when the better tokens before it already reach top_p.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs / probs.sum()


def compiled_decode_step(model: Llama) -> Callable[..., torch.Tensor]:
    """``model``'s forward pass, compiled with ``torch.compile`` for one-token decoding steps.

    Why this is faster: at batch 1 each weight is read from memory once per
    token and used for a single multiply-add, so decoding is limited by memory
    bandwidth, not arithmetic. Eagerly, every ``(1, dim) @ (dim, out)`` product
    goes to the BLAS matrix-vector routine, which on CPU streams the weights
    with one core, and each layer adds about twenty small kernels, each paying
    Python and dispatch overhead. Inductor, the compiler behind
    ``torch.compile``, writes one program for the whole step instead: asked to
    (``decompose_mm_pass``), it turns single-row products into
    multiply-and-sum loops that it vectorises and spreads over all cores, and it
    fuses the norms, RoPE and SwiGLU into a few loops. The sums run in a
    different order than BLAS's, so logits differ from the eager ones by
    rounding only (about 1e-5).

    Compiling takes tens of seconds on a laptop CPU, once per model and
    process (later processes reuse inductor's on-disk cache), so it pays off
    for long generations. The result is cached on the model.
    """
    step = model.__dict__.get("_compiled_decode_step")
    if step is None:
        # Single-row products become multiply-and-sum loops (on CPU, for matrices up to 2048 wide:
        # every layer of a small model, though not a 49,152-token output head, which stays with BLAS).
        options = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}
        # dynamic=True: start_pos and the cache length change at every step, and must not trigger recompiles.
        compiled = torch.compile(model.forward, dynamic=True, options=options)

        def step(*args, **kwargs) -> torch.Tensor:
            # Floats such as config.rope_theta are constants: left symbolic (dynamic=True's default),
            # the compiler meets them mid-trace, gives up and traces everything again (~10 s more).
            with torch._dynamo.config.patch(specialize_float=True):
                return compiled(*args, **kwargs)

        model.__dict__["_compiled_decode_step"] = step
    return step


@dataclass(frozen=True)
class GenerationConfig:
    """One request's decoding settings: how each new token is picked, and when generation ends.

    At most ``max_new_tokens`` new tokens; greedy when ``temperature`` is 0, otherwise sampled from the
    temperature-scaled distribution restricted to the ``top_k`` best tokens and to the ``top_p`` nucleus
    when those are given (:func:`next_token_probabilities`). Generation ends early at the first token of
    ``stop_tokens`` (not returned, as in Meta's reference code). ``seed`` makes sampling reproducible.
    The field names are Hugging Face's ``GenerationConfig``'s; a server gets one per request. Settings are
    checked when the config is made, so a mistake raises there (:class:`ValueError`).
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: frozenset[int] = frozenset()  # any iterable of ids may be given: kept as a frozenset
    seed: int | None = None

    def __post_init__(self) -> None:
        max_new = self.max_new_tokens
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new!r}")
        # Sampling computes in float32: a setting that float32 rounds to 0 or to infinity (top_p 1e-46) would pass
        # a check made on the Python float and then divide by zero or keep no token at all.
        if not (is_float32(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"temperature must be a finite number >= 0 (0 means greedy), in float32 too, got {self.temperature!r}"
            )
        top_k = self.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        if self.top_p is not None and not (is_float32(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be None or a number in (0, 1], not 0 in float32 either, got {self.top_p!r}")
        seed = self.seed  # torch.Generator.manual_seed takes a 64-bit seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
        object.__setattr__(self, "stop_tokens", frozenset(self.stop_tokens))  # frozen: set once, here

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """The next token id from ``(vocab_size,)`` logits, by these settings (:func:`sample_next_token`)."""
        return sample_next_token(logits, self.temperature, self.top_k, self.top_p, generator)

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A random generator on ``device`` seeded with ``seed``; ``None`` (torch's global one) without a seed."""
        return torch.Generator(device=device).manual_seed(self.seed) if self.seed is not None else None


def check_prompt(model: Llama, prompt: Sequence[int], max_new_tokens: int) -> None:
    """Raise a ``ValueError`` naming what is wrong if ``prompt`` cannot start a generation of ``max_new_tokens``
    with ``model``: empty, a token id outside the vocabulary, or prompt + new tokens beyond the context."""
    if len(prompt) == 0:
        raise ValueError("prompt_tokens is empty: generation needs at least one token to start from")
    vocab = model.config.vocab_size
    bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt_tokens must be ints in [0, {vocab}), got {bad[:5]}")
    if len(prompt) + max_new_tokens > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of "
            f"max_seq_len={model.config.max_seq_len} tokens"
        )


def prefill(model: Llama, prompt: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
    """Run the whole prompt ``(1, seq)`` through the model at once, filling ``cache``; the last position's logits.

    All prompt positions are computed in parallel (one big matrix product per weight), which is why the
    prompt costs little more than one token. Returns ``(vocab_size,)`` logits for the first new token.
    """
    return model(prompt, 0, cache)[0, -1]


def decode_one_token(
    step: Callable[..., torch.Tensor], token: torch.Tensor, pos: int, cache: list[KVCache]
) -> torch.Tensor:
    """One new token ``(1, 1)`` at position ``pos``, attending to the cache: ``(vocab_size,)`` logits for the next.

    ``step`` is the model's forward pass or its compiled form (:func:`compiled_decode_step`).
    """
    return step(token, pos, cache)[0, -1]


def generate_stream(
    model: Llama,
    prompt_tokens: Sequence[int] | torch.Tensor,
    config: GenerationConfig,
    use_cache: bool = True,
    compile: bool = False,
) -> Iterator[int]:
    """Yield new token ids one by one as the model produces them, picked and stopped as ``config`` says.

    ``use_cache=False`` recomputes the whole sequence at every step: slower, for comparison only.
    ``compile=True`` runs the decode steps through :func:`compiled_decode_step`: a slow first call,
    then faster tokens. The prompt is checked here, before the first token, so a mistake raises at the call.
    """
    prompt = prompt_tokens.tolist() if isinstance(prompt_tokens, torch.Tensor) else list(prompt_tokens)
    check_prompt(model, prompt, config.max_new_tokens)
    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True: it compiles the one-token step that reads the KV cache")
    step = compiled_decode_step(model) if compile else model
    return _decode(model, step, prompt, config, use_cache)


@torch.inference_mode()
def _decode(
    model: Llama, step: Callable[..., torch.Tensor], prompt: list[int], config: GenerationConfig, use_cache: bool
) -> Iterator[int]:
    """The decoding loop behind :func:`generate_stream` (arguments already checked)."""
    device, generator = model.device, config.generator(model.device)
    tokens = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, seq), grows without the cache
    cache = model.new_kv_caches(1, len(prompt) + config.max_new_tokens) if use_cache else None
    for i in range(config.max_new_tokens):
        if not use_cache:
            logits = model(tokens)[0, -1]  # every position again, for comparison
        elif i == 0:
            logits = prefill(model, tokens, cache)
        else:
            logits = decode_one_token(step, tokens[:, -1:], len(prompt) + i - 1, cache)
        token = config.sample(logits, generator)
        if token in config.stop_tokens:
            return
        yield token
        tokens = torch.cat([tokens, torch.tensor([[token]], dtype=torch.long, device=device)], dim=1)


def generate(
    model: Llama, prompt_tokens: Sequence[int] | torch.Tensor, config: GenerationConfig, **options
) -> list[int]:
    """The new token ids after ``prompt_tokens`` (the prompt itself is not included), as ``config`` says.

    ``options`` are those of :func:`generate_stream` (``use_cache``, ``compile``).
    """
    return list(generate_stream(model, prompt_tokens, config, **options))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one ``(batch, longest)`` tensor, padded on the left; and its mask.

    Padding goes on the *left* so that every prompt ends in the last column: the next token of every row
    is then predicted at the same position, and each decoding step appends one column to all rows.
    Returns ``tokens`` and ``attention_mask``, both ``(batch, longest)``; the mask is True for real tokens.
    ``pad_id`` can be any token id: padding is never attended to.
    """
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError(f"need at least one prompt and no empty prompt, got lengths {[len(p) for p in prompts]}")
    longest = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, longest - len(prompt) :] = True
    return tokens, attention_mask


@torch.inference_mode()
def generate_batch(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    pad_id: int = 0,
    finished: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Generate after several prompts at once: the new token ids of each, as :func:`generate` would give them.

    The prompts are left-padded to one length (:func:`left_pad`) and run as one batch: one prefill (of each
    distinct prompt once: ``n`` samples of one prompt copy its keys and values), then
    one ``(batch, 1)`` forward pass per step, so the weights are read once per step for all rows. The
    attention mask grows by one True column per step and keeps hiding the padding. A row that meets a
    stop token is finished (the stop token is not returned) but keeps being fed until every row is done:
    the batch moves in lockstep. ``finished``, if given, is asked after each token a row gains, with that
    row's new tokens so far: True finishes the row there, that last token kept (how a stop *sequence* of
    text ends a row: chapter 12's answers). Greedy rows give :func:`generate`'s tokens up to float rounding (the
    padding shifts a row's positions, which RoPE ignores up to rounding). Sampling draws the rows in
    order from one generator, so it is reproducible with ``config.seed`` but draws other numbers than
    :func:`generate` would for each prompt alone.
    """
    rows = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
    index: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its row in the prefill, in order of appearance
    for row in rows:
        index.setdefault(tuple(row), len(index))
    distinct = list(index)
    tokens, attention_mask = left_pad(distinct, pad_id)  # (distinct prompts, longest) each
    max_new_tokens = config.max_new_tokens
    for row in distinct:
        check_prompt(model, row, max_new_tokens)
    if tokens.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise ValueError(
            f"the longest prompt ({tokens.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of max_seq_len={model.config.max_seq_len} tokens"
        )
    device, generator = model.device, config.generator(model.device)
    batch, start_pos = len(rows), tokens.shape[1]
    tokens, attention_mask = tokens.to(device), attention_mask.to(device)
    cache = model.new_kv_caches(tokens.shape[0], start_pos + max_new_tokens)
    # Prefill, once per distinct prompt (several samples of one prompt share it); only the last column's
    # logits are needed, so the output head runs on that column alone.
    logits = model.output_logits(model.hidden_states(tokens, 0, cache, attention_mask)[:, -1])  # (distinct, vocab)
    if len(distinct) < batch:  # each row starts from a copy of its prompt's keys, values, mask and logits
        of_row = torch.tensor([index[tuple(row)] for row in rows], device=device)  # (batch,)
        cache = [layer.select_rows(of_row) for layer in cache]
        logits, attention_mask = logits[of_row], attention_mask[of_row]  # (batch, vocab), (batch, longest)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        new = [config.sample(logits[row], generator) for row in range(batch)]
        for row, token in enumerate(new):
            if done[row] or token in config.stop_tokens:
                done[row] = True
                continue
            outputs[row].append(token)
            done[row] = finished is not None and finished(outputs[row])
        if all(done) or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)  # (batch, pos + 1)
        column = torch.tensor(new, dtype=torch.long, device=device)[:, None]  # (batch, 1)
        logits = model(column, start_pos, cache, attention_mask)[:, -1]
        start_pos += 1
    return outputs
