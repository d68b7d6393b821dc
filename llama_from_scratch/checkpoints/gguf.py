"""The GGUF checkpoint format of llama.cpp: one file with metadata, tokenizer and (quantized) tensors.

A GGUF file starts with key-value metadata (``llama.block_count``,
``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), then a table of
tensors (name, shape, type, offset), then the tensor data. Shapes are listed
fastest-varying dimension first, so a ``(out, in)`` weight appears as
``[in, out]``.

Tensors may be quantized in blocks. In Q4_1, for example, every block of 32
weights stores a float16 scale ``d``, a float16 minimum ``m`` and 32 four-bit
integers ``q``, and each weight is ``d * q + m``: 20 bytes for 32 weights, 5
bits per weight instead of 32. Q8_0 stores a scale and 32 eight-bit integers
(``w = d * q``). The ``gguf`` package's ``dequantize`` turns any of these back
into float32; this module maps names and metadata to this package's.

llama.cpp applies RoPE to neighbouring pairs, exactly like Meta's code and this
package, so GGUF's ``attn_q`` / ``attn_k`` load as they are, with no row
permutation (Hugging Face's rotate-half layout is the odd one out).

The tokenizer travels in the same file, as ``tokenizer.ggml.*`` metadata
(``model`` is ``"llama"`` for SentencePiece, ``"gpt2"`` for byte-level BPE), and
so does the chat template (``tokenizer.chat_template``). This module reads and
writes all of it: :func:`read_gguf_tensors` / :func:`config_from_gguf` /
:func:`read_gguf_tokenizer` and :func:`write_gguf`. Every metadata value is
read through :func:`gguf_field`, with its type checked.

RoPE scaling travels as ``llama.rope.scaling.*`` metadata (linear, YaRN) or, for Llama 3.1, as a tensor
``rope_freqs.weight`` of per-pair divisors: :func:`rope_scaling_from_gguf` and :func:`add_gguf_rope_scaling`.

The ``gguf`` package's reader trusts the file, so :func:`open_gguf` first checks its layout
(:mod:`.gguf_layout`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..chat import chat_template
from ..config import LlamaConfig
from ..errors import FormatError
from ..files import check_type
from ..quantization.ggml_blocks import quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0
from ..rope import rope_frequencies
from ..rope_scaling import (
    LLAMA3_HIGH_FREQ_FACTOR,
    LLAMA3_LOW_FREQ_FACTOR,
    LLAMA3_ORIGINAL_CONTEXT,
    RopeScaling,
    linear_scaling,
    llama3_scaling,
    meta_llama3_scaling,
    yarn_attention_factor,
)
from ..tokenization.byte_bpe import PRE_TOKENIZERS, ByteLevelBPE
from ..tokenization.sentencepiece_bpe import SentencePieceTokenizer
from ..tokenization.sentencepiece_model import Piece, PieceType, SentencePieceModel, check_pieces
from ..tokenization.tokenizer import token_text
from .gguf_layout import check_gguf_layout
from .names import GGUF_NAMES, GGUF_ROPE_FREQS


def gguf_to_meta_name(name: str) -> str | None:
    """``blk.3.ffn_gate.weight -> layers.3.feed_forward.w1.weight``; None if not a Llama weight."""
    return GGUF_NAMES.to_meta(name)


def meta_to_gguf_name(name: str) -> str | None:
    """The inverse of :func:`gguf_to_meta_name`."""
    return GGUF_NAMES.from_meta(name)


def open_gguf(path: str | Path):
    """Parse a GGUF file's header and tensor table (the data stays memory-mapped): a ``gguf.GGUFReader``.

    The layout is checked first (:func:`check_gguf_layout`), so that a damaged or crafted file is a
    :class:`FormatError` naming the field, never a reader that runs out of memory.
    """
    from gguf import GGUFReader

    check_gguf_layout(path)
    try:
        return GGUFReader(str(path))
    except Exception as error:  # the reader raises many types on a damaged file
        raise FormatError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None


_MISSING = object()


def gguf_field(
    reader,
    key: str,
    default: object = _MISSING,
    source: str | Path = "GGUF file",
    kind: str | None = None,
    items: str | None = None,
) -> object:
    """The value of metadata ``key`` (a number, a string or a list); ``default`` if absent.

    Without a default, a missing key is a :class:`FormatError` naming ``source`` and the key. ``kind`` (and
    ``items`` for a list's elements): the type the value must have, as in :func:`.files.check_type`.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise FormatError(f"{source}: missing metadata {key}")
        return default
    try:
        value = field.contents()
    except (ValueError, IndexError) as error:  # UnicodeDecodeError is a ValueError
        raise FormatError(f"{source}: metadata {key} cannot be read ({error})") from None
    return value if kind is None else check_type(value, kind, f"{source}: metadata {key}", items)


def _float32_decimal(value: float) -> float:
    """The shortest decimal that a float32 metadata value stands for: 9.99999974e-06 -> 1e-05."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def config_from_gguf(reader, source: str | Path) -> LlamaConfig:
    """Translate a GGUF file's ``llama.*`` metadata into a :class:`LlamaConfig`."""

    def get(key: str, default: object = _MISSING, kind: str = "int") -> object:
        return gguf_field(reader, key, default, source, kind)

    arch = get("general.architecture", None, "str")
    if arch != "llama":
        raise FormatError(f"{source}: general.architecture is {arch!r}; this package loads 'llama' models")
    n_heads = get("llama.attention.head_count")
    vocab_size = get("llama.vocab_size", None) or len(get("tokenizer.ggml.tokens", kind="list"))
    names = {tensor.name for tensor in reader.tensors}
    fields = dict(
        dim=get("llama.embedding_length"),
        n_layers=get("llama.block_count"),
        n_heads=n_heads,
        n_kv_heads=get("llama.attention.head_count_kv", n_heads),
        vocab_size=vocab_size,
        hidden_dim=get("llama.feed_forward_length"),
        head_dim=get("llama.attention.key_length", get("llama.rope.dimension_count", None)),
        norm_eps=_float32_decimal(get("llama.attention.layer_norm_rms_epsilon", 1e-5, "float")),
        rope_theta=_float32_decimal(get("llama.rope.freq_base", 10000.0, "float")),
        max_seq_len=get("llama.context_length", 2048),
        tie_embeddings="output.weight" not in names,  # no output matrix: the embedding is reused
    )
    try:
        config = LlamaConfig(**fields)
    except (TypeError, ValueError) as error:
        raise FormatError(f"{source}: {error}") from None
    return config.replace(rope_scaling=rope_scaling_from_gguf(reader, source, config.head_dim, config.rope_theta))


def rope_scaling_from_gguf(reader, source: str | Path, head_dim: int, theta: float) -> RopeScaling | None:
    """The RoPE scaling of a GGUF file: ``llama.rope.scaling.*`` metadata, or a ``rope_freqs`` tensor.

    llama.cpp knows the types ``none``, ``linear`` (``factor``) and ``yarn`` (``factor``,
    ``original_context_length``, optional ``yarn_beta_fast`` / ``yarn_beta_slow`` and ``attn_factor``, which
    multiplies YaRN's own ``0.1 ln(factor) + 1``). Llama 3.1's scaling has no type there: its converter
    stores the per-pair divisors as the tensor ``rope_freqs.weight`` instead
    (:func:`rope_frequency_divisors`), which is read back as Meta's ``llama3``
    scaling with the largest divisor as its factor, and must then equal that scaling's divisors.
    """

    def get(key: str, default: object = _MISSING, kind: str = "float") -> object:
        return gguf_field(reader, f"llama.rope.scaling.{key}", default, source, kind)

    rope_type = get("type", "none", "str")
    freqs = next((t for t in reader.tensors if t.name == GGUF_ROPE_FREQS), None)
    if freqs is not None and rope_type != "none":
        raise FormatError(f"{source}: both metadata llama.rope.scaling.type {rope_type!r} and tensor {GGUF_ROPE_FREQS}")
    if rope_type == "none":
        if freqs is None:
            return None
        return _llama3_from_rope_freqs(freqs, source, head_dim, theta, get("original_context_length", None, "int"))
    if rope_type not in ("linear", "yarn"):
        raise NotImplementedError(
            f"{source}: metadata llama.rope.scaling.type {rope_type!r} is not implemented (none, linear and yarn are)"
        )
    factor = _float32_decimal(get("factor"))
    parameters = {}
    if rope_type == "yarn":
        if get("yarn_log_multiplier", 0.0):
            raise NotImplementedError(f"{source}: metadata llama.rope.scaling.yarn_log_multiplier is not implemented")
        parameters["original_max_position_embeddings"] = get("original_context_length", kind="int")
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if (value := get(key, None)) is not None:
                parameters[name] = _float32_decimal(value)
        attn_factor = get("attn_factor", None)
        if attn_factor is not None and attn_factor != 1.0:  # float32 keeps 7 significant digits: so does the product
            parameters["attention_factor"] = float(f"{attn_factor * yarn_attention_factor(factor):.7g}")
    try:
        return RopeScaling(rope_type, factor=factor, **parameters)
    except ValueError as error:
        raise FormatError(f"{source}: metadata llama.rope.scaling: {error}") from None


def _llama3_from_rope_freqs(
    tensor, source: str | Path, head_dim: int, theta: float, original: int | None
) -> RopeScaling:
    where = f"{source}: tensor {tensor.name}"
    divisors = dequantized(tensor)
    if tuple(divisors.shape) != (head_dim // 2,):
        raise FormatError(f"{where} has shape {tuple(divisors.shape)}, expected ({head_dim // 2},): one per RoPE pair")
    try:
        scaling = meta_llama3_scaling(_float32_decimal(float(divisors.max())), original or LLAMA3_ORIGINAL_CONTEXT)
    except ValueError as error:
        raise FormatError(f"{where}: {error}") from None
    expected = rope_frequency_divisors(head_dim, theta, scaling)
    # Both sides come from float32 frequencies through a few float32 or float64 operations: a relative 1e-6
    # (eight float32 roundings) separates rounding from another scaling, which moves divisors by whole percents.
    mismatch = (divisors - expected).abs() / expected
    if mismatch.max() > 1e-6:
        pair = int(mismatch.argmax())
        raise NotImplementedError(
            f"{where} is not Llama 3.1's scaling (factor {scaling.factor:g}, low_freq_factor 1, high_freq_factor 4, "
            f"original context {scaling.original_max_position_embeddings}): pair {pair} is divided by "
            f"{float(divisors[pair]):.7g}, that scaling divides it by {float(expected[pair]):.7g}"
        )
    return scaling


def gguf_tensor_shapes(reader) -> dict[str, tuple[int, ...]]:
    """The shape of every Llama weight in the file, under this package's names, ``(out, in)`` order."""
    shapes = {}
    for tensor in reader.tensors:
        name = gguf_to_meta_name(tensor.name)
        if name is not None:
            shapes[name] = tuple(int(n) for n in reversed(tensor.shape))
    return shapes


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as a float32 torch tensor of shape ``(out, in)`` (or ``(n,)``)."""
    from gguf import quants

    array = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
    # A copy: float32 tensors come back as read-only views of the memory-mapped file.
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


_INTEGER_TYPES = ("I8", "I16", "I32", "I64")  # GGML's plain integer tensors: never the weights of a model


def read_gguf_tensors(path: Path, reader) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(file name, Meta name, float32 tensor)`` for every tensor in the file."""
    for tensor in reader.tensors:
        name = gguf_to_meta_name(tensor.name)
        if name is None:
            if tensor.name == GGUF_ROPE_FREQS:
                continue  # RoPE scaling, read into the config by rope_scaling_from_gguf
            raise FormatError(f"{path}: tensor {tensor.name!r} is not a weight of a Llama model")
        where = f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name})"
        if tensor.tensor_type.name in _INTEGER_TYPES:
            raise FormatError(f"{where} holds integers; a weight is floating-point or quantized")
        try:
            weight = dequantized(tensor)
        except NotImplementedError as error:
            raise NotImplementedError(f"{where}: {error}") from None
        except ValueError as error:
            raise FormatError(f"{where}: {error}") from None
        yield path.name, name, weight


def read_gguf_tokenizer(path: str | Path, reader=None) -> SentencePieceTokenizer | ByteLevelBPE:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata.

    ``tokenizer.ggml.model`` says which kind: ``"gpt2"`` is byte-level BPE (``tokens`` and ``merges``, and
    ``pre`` names the pre-tokenizer), ``"llama"`` is SentencePiece (``tokens``, ``scores``, ``token_type``).
    Token types use SentencePiece's numbering: 3 (control) and 4 (user-defined) are special tokens.
    Pass an open ``reader`` (:func:`open_gguf`) to avoid parsing the file twice when the weights are read too.
    ``token_type`` and ``scores`` must list as many entries as ``tokens``.
    """
    path = Path(path)
    reader = reader or open_gguf(path)

    def get(key: str, default: object = _MISSING, kind: str | None = None, items: str | None = None) -> object:
        return gguf_field(reader, key, default, path, kind, items)

    kind = get("tokenizer.ggml.model", None, "str")
    if kind is None:
        raise FormatError(f"{path} holds no tokenizer (no tokenizer.ggml.model in its metadata)")
    tokens = get("tokenizer.ggml.tokens", kind="list", items="str")

    def per_token(key: str, items: str, default: object) -> list:
        values = get(key, None, "list", items)
        if values is None:
            return [default] * len(tokens)
        if len(values) != len(tokens):
            raise FormatError(f"{path}: metadata {key} has {len(values)} entries, tokenizer.ggml.tokens {len(tokens)}")
        return values

    types = per_token("tokenizer.ggml.token_type", "int", int(PieceType.NORMAL))
    special_ids = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token_id = get(f"tokenizer.ggml.{key}_token_id", None, "int")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise FormatError(
                f"{path}: metadata tokenizer.ggml.{key}_token_id is {token_id}, not one of the {len(tokens)} tokens"
            )
        special_ids[f"{name}_id"] = token_id
    if kind == "gpt2":
        pre = get("tokenizer.ggml.pre", "gpt2", "str")
        if pre not in PRE_TOKENIZERS:
            raise NotImplementedError(
                f"{path}: pre-tokenizer {pre!r} is not supported; known: {sorted(PRE_TOKENIZERS)}"
            )
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges", kind="list", items="str")]
        for i, merge in enumerate(merges):
            if len(merge) != 2:
                raise FormatError(f'{path}: metadata tokenizer.ggml.merges[{i}] is {merge[0]!r:.60}, not "left right"')
        special = {t: i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ in (3, 4)}
        if "" in special:  # it would match between every two characters of every text
            raise FormatError(f"{path}: metadata tokenizer.ggml.tokens[{special['']}] is an empty special token")
        vocab = {t: i for i, t in enumerate(tokens)}
        return ByteLevelBPE(vocab, merges, PRE_TOKENIZERS[pre], special, **special_ids)
    if kind == "llama":
        scores = per_token("tokenizer.ggml.scores", "float", 0.0)
        for i, token_type in enumerate(types):
            if token_type not in PieceType._value2member_map_:
                raise FormatError(f"{path}: metadata tokenizer.ggml.token_type[{i}] is {token_type}, expected 1 to 6")
        pieces = [Piece(t, float(s), PieceType(k)) for t, s, k in zip(tokens, scores, types)]
        model = SentencePieceModel(
            pieces,
            model_type="bpe",
            normalizer_name="identity",
            byte_fallback=any(p.type == PieceType.BYTE for p in pieces),
            add_dummy_prefix=get("tokenizer.ggml.add_space_prefix", True, "bool"),
            remove_extra_whitespaces=False,
        )
        try:
            check_pieces(pieces)
            return SentencePieceTokenizer(model)
        except ValueError as error:
            raise FormatError(f"{path}: metadata tokenizer.ggml.tokens: {error}") from None
    raise NotImplementedError(f"{path}: tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')")


def read_gguf_chat_template(path: str | Path, reader=None) -> str | None:
    """The chat template stored in the file (``tokenizer.chat_template``), or None."""
    template = gguf_field(reader or open_gguf(path), "tokenizer.chat_template", None, path, "str")
    return None if template is None else chat_template(template, f"{path}: tokenizer.chat_template")


# -- writing ---------------------------------------------------------------------------------------------------


def add_gguf_tokenizer(writer, tokenizer, chat_template: str | None = None) -> None:
    """Add ``tokenizer.ggml.*`` metadata (and the chat template) to a ``gguf.GGUFWriter``."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        model = tokenizer.model
        if model.remove_extra_whitespaces:
            raise ValueError("GGUF cannot record remove_extra_whitespaces=True; this SentencePiece model needs it")
        writer.add_tokenizer_model("llama")
        writer.add_token_list([p.piece for p in model.pieces])
        writer.add_token_scores([p.score for p in model.pieces])
        writer.add_token_types([int(p.type) for p in model.pieces])
        writer.add_add_space_prefix(model.add_dummy_prefix)
    elif isinstance(tokenizer, ByteLevelBPE):
        names = [name for name, patterns in PRE_TOKENIZERS.items() if patterns == tokenizer.patterns]
        if not names:
            raise ValueError(
                "this tokenizer's pre-tokenizer has no GGUF name (known: " + ", ".join(PRE_TOKENIZERS) + ")"
            )
        tokens = [token_text(tokenizer, i) or f"[PAD{i}]" for i in range(tokenizer.vocab_size)]
        types = [
            int(PieceType.CONTROL if i in tokenizer.id_to_special else PieceType.NORMAL)
            for i in range(tokenizer.vocab_size)
        ]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(names[0])
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([f"{a} {b}" for (a, b), _ in sorted(tokenizer.ranks.items(), key=lambda kv: kv[1])])
    else:
        raise TypeError(f"cannot export a tokenizer of type {type(tokenizer).__name__}")
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if getattr(tokenizer, f"{name}_id") is not None:
            add(getattr(tokenizer, f"{name}_id"))
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def rope_frequency_divisors(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """How many times slower each pair turns under ``scaling``: plain frequency / scaled frequency.

    ``(head_dim // 2,)`` float32, computed in float64 from the float32 frequencies. llama.cpp stores Llama
    3.1's scaling this way, as a tensor ``rope_freqs`` of per-pair divisors (1 for the fast pairs, ``factor``
    for the slow ones), and divides each pair's angle by it. Only frequency-only scalings (linear, llama3)
    have such a form: YaRN also changes the attention temperature, dynamic NTK the length.
    """
    if scaling.type not in ("linear", "llama3"):
        raise ValueError(f"{scaling.type!r} scaling is not a fixed divisor per pair (only linear and llama3 are)")
    plain = rope_frequencies(head_dim, theta).double()
    if scaling.type == "linear":
        return (plain / linear_scaling(plain, scaling.factor)).float()
    scaled = llama3_scaling(
        plain,
        scaling.factor,
        scaling.low_freq_factor,
        scaling.high_freq_factor,
        scaling.original_max_position_embeddings,
    )
    return (plain / scaled).float()


def add_gguf_rope_scaling(writer, config: LlamaConfig) -> None:
    """Add the config's RoPE scaling to a ``gguf.GGUFWriter`` the way llama.cpp's converter does.

    ``linear`` and ``yarn`` as ``llama.rope.scaling.*`` metadata; ``llama3`` as the ``rope_freqs.weight``
    tensor of per-pair divisors (float32), with ``original_context_length`` only when it is not 8,192.
    ``ValueError`` for what GGUF cannot hold: dynamic NTK (llama.cpp has no such type) and ``llama3`` with
    frequency bounds other than Meta's 1 and 4 (the divisors are read back with those).
    """
    from gguf import RopeScalingType

    scaling = config.rope_scaling
    if scaling is None:
        return
    if scaling.type == "dynamic":
        raise ValueError("GGUF cannot record dynamic NTK RoPE scaling: llama.cpp's types are none, linear and yarn")
    if scaling.type == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling.factor)
    elif scaling.type == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling.factor)
        writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings)
        if scaling.beta_fast is not None:
            writer.add_rope_scaling_yarn_beta_fast(scaling.beta_fast)
        if scaling.beta_slow is not None:
            writer.add_rope_scaling_yarn_beta_slow(scaling.beta_slow)
        if scaling.attention_factor is not None:  # llama.cpp multiplies its own 0.1 ln(factor) + 1 by this
            writer.add_rope_scaling_attn_factors(scaling.attention_factor / yarn_attention_factor(scaling.factor))
    else:  # llama3
        bounds = (scaling.low_freq_factor, scaling.high_freq_factor)
        if bounds != (LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR):
            raise ValueError(
                f"GGUF records llama3 RoPE scaling only with Meta's low_freq_factor 1 and high_freq_factor 4, "
                f"got {bounds[0]} and {bounds[1]}"
            )
        if scaling.original_max_position_embeddings != LLAMA3_ORIGINAL_CONTEXT:
            writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings)
        divisors = rope_frequency_divisors(config.head_dim, config.rope_theta, scaling)
        writer.add_tensor(GGUF_ROPE_FREQS, divisors.numpy())


GGUF_QUANT_NAMES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # the block formats write_gguf can write


def gguf_quants() -> dict[str, tuple]:
    """``quant`` name -> (GGML tensor type, llama.cpp file type, our block quantizer)."""
    from gguf import GGMLQuantizationType as T
    from gguf import LlamaFileType as F

    return {
        "q8_0": (T.Q8_0, F.MOSTLY_Q8_0, quantize_q8_0),
        "q4_0": (T.Q4_0, F.MOSTLY_Q4_0, quantize_q4_0),
        "q4_1": (T.Q4_1, F.MOSTLY_Q4_1, quantize_q4_1),
        "q5_0": (T.Q5_0, F.MOSTLY_Q5_0, quantize_q5_0),
        "q5_1": (T.Q5_1, F.MOSTLY_Q5_1, quantize_q5_1),
    }


def write_gguf(
    config: LlamaConfig,
    weights: dict[str, torch.Tensor],
    file: Path,
    dtype: torch.dtype,
    tokenizer=None,
    chat_template: str | None = None,
    quant: str | None = None,
) -> None:
    """Write ``weights`` (this package's names, float32) as one GGUF file: float32, float16, or quantized.

    ``quant`` (``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``, ``"q5_1"``) stores every matrix in that
    block format, written by :mod:`~llama_from_scratch.quantization.ggml_blocks` (byte-for-byte what
    ``gguf``'s own quantizer writes); ``dtype`` then applies to nothing. Norms stay float32, as llama.cpp
    writes them. A tied model has no ``output.weight``: llama.cpp then reuses ``token_embd``, as SmolLM2's
    file does. RoPE scaling: :func:`add_gguf_rope_scaling`.
    """
    from gguf import GGUFWriter

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"GGUF export writes float32 or float16, got {dtype}")
    if quant is not None and quant not in GGUF_QUANT_NAMES:
        raise ValueError(f"unknown GGUF quantization {quant!r}; choose one of {', '.join(GGUF_QUANT_NAMES)}")
    block_formats = gguf_quants()
    writer = GGUFWriter(str(file), "llama")
    writer.add_name("llama-from-scratch model")
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    add_gguf_rope_scaling(writer, config)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(block_formats[quant][1] if quant else 0 if dtype == torch.float32 else 1)
    if tokenizer is not None:
        add_gguf_tokenizer(writer, tokenizer, chat_template)
    for name, tensor in weights.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and quant is not None:
            block_type, _, quantize_blocks = block_formats[quant]
            try:
                writer.add_tensor(meta_to_gguf_name(name), quantize_blocks(array), raw_dtype=block_type)
            except ValueError as error:
                raise ValueError(f"tensor {name!r}: {error}") from None
            continue
        if array.ndim == 2 and dtype == torch.float16:
            array = array.astype(np.float16)
        writer.add_tensor(meta_to_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
