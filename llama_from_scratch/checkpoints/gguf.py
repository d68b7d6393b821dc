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
read through :func:`gguf_field`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import LlamaConfig
from ..errors import FormatError
from ..tokenization.byte_bpe import PRE_TOKENIZERS, ByteLevelBPE
from ..tokenization.load import token_text
from ..tokenization.sentencepiece_bpe import SentencePieceTokenizer
from ..tokenization.sentencepiece_model import Piece, PieceType, SentencePieceModel
from .names import GGUF_NAMES


def gguf_to_meta_name(name: str) -> str | None:
    """``blk.3.ffn_gate.weight -> layers.3.feed_forward.w1.weight``; None if not a Llama weight."""
    return GGUF_NAMES.to_meta(name)


def meta_to_gguf_name(name: str) -> str | None:
    """The inverse of :func:`gguf_to_meta_name`."""
    return GGUF_NAMES.from_meta(name)


def open_gguf(path: str | Path):
    """Parse a GGUF file's header and tensor table (the data stays memory-mapped): a ``gguf.GGUFReader``."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as error:  # the reader raises many types on a damaged file
        raise FormatError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None


_MISSING = object()


def gguf_field(reader, key: str, default: object = _MISSING, source: str | Path = "GGUF file") -> object:
    """The value of metadata ``key`` (a number, a string or a list); ``default`` if absent.

    Without a default, a missing key is a :class:`FormatError` naming ``source`` and the key.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise FormatError(f"{source}: missing metadata {key}")
        return default
    return field.contents()


def _float32_decimal(value: float) -> float:
    """The shortest decimal that a float32 metadata value stands for: 9.99999974e-06 -> 1e-05."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def config_from_gguf(reader, source: str | Path) -> LlamaConfig:
    """Translate a GGUF file's ``llama.*`` metadata into a :class:`LlamaConfig`."""

    def get(key: str, default: object = _MISSING) -> object:
        return gguf_field(reader, key, default, source)

    arch = get("general.architecture", None)
    if arch != "llama":
        raise FormatError(f"{source}: general.architecture is {arch!r}; this package loads 'llama' models")
    if get("llama.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"{source}: RoPE scaling {get('llama.rope.scaling.type')!r} is not supported")
    dim, n_heads = get("llama.embedding_length"), get("llama.attention.head_count")
    n_layers, hidden_dim = get("llama.block_count"), get("llama.feed_forward_length")
    vocab_size = get("llama.vocab_size", None) or len(get("tokenizer.ggml.tokens"))
    names = {tensor.name for tensor in reader.tensors}
    try:
        return LlamaConfig(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=get("llama.attention.head_count_kv", n_heads),
            vocab_size=vocab_size,
            hidden_dim=hidden_dim,
            head_dim=get("llama.attention.key_length", get("llama.rope.dimension_count", None)),
            norm_eps=_float32_decimal(get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_float32_decimal(get("llama.rope.freq_base", 10000.0)),
            max_seq_len=get("llama.context_length", 2048),
            tie_embeddings="output.weight" not in names,  # no output matrix: the embedding is reused
        )
    except (TypeError, ValueError) as error:
        raise FormatError(f"{source}: {error}") from None


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as a float32 torch tensor of shape ``(out, in)`` (or ``(n,)``)."""
    from gguf import quants

    array = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
    # A copy: float32 tensors come back as read-only views of the memory-mapped file.
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


def read_gguf_tensors(path: Path, reader) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(file name, Meta name, float32 tensor)`` for every tensor in the file."""
    for tensor in reader.tensors:
        name = gguf_to_meta_name(tensor.name)
        if name is None:
            if tensor.name == "rope_freqs.weight":
                continue  # RoPE frequencies: recomputed from the metadata
            raise FormatError(f"{path}: tensor {tensor.name!r} is not a weight of a Llama model")
        try:
            yield path.name, name, dequantized(tensor)
        except (NotImplementedError, ValueError) as error:
            raise FormatError(f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name}): {error}") from None


def read_gguf_tokenizer(path: str | Path, reader=None) -> SentencePieceTokenizer | ByteLevelBPE:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata.

    ``tokenizer.ggml.model`` says which kind: ``"gpt2"`` is byte-level BPE (``tokens`` and ``merges``, and
    ``pre`` names the pre-tokenizer), ``"llama"`` is SentencePiece (``tokens``, ``scores``, ``token_type``).
    Token types use SentencePiece's numbering: 3 (control) and 4 (user-defined) are special tokens.
    Pass an open ``reader`` (:func:`open_gguf`) to avoid parsing the file twice when the weights are read too.
    """
    path = Path(path)
    reader = reader or open_gguf(path)

    def get(key: str, default: object = _MISSING) -> object:
        return gguf_field(reader, key, default, path)

    kind = get("tokenizer.ggml.model", None)
    if kind is None:
        raise FormatError(f"{path} holds no tokenizer (no tokenizer.ggml.model in its metadata)")
    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type", [1] * len(tokens))
    special_ids = {
        f"{name}_id": get(f"tokenizer.ggml.{key}_token_id", None)
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
    }
    if kind == "gpt2":
        pre = get("tokenizer.ggml.pre", "gpt2")
        if pre not in PRE_TOKENIZERS:
            raise NotImplementedError(
                f"{path}: pre-tokenizer {pre!r} is not supported; known: {sorted(PRE_TOKENIZERS)}"
            )
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        special = {t: i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ in (3, 4)}
        vocab = {t: i for i, t in enumerate(tokens)}
        return ByteLevelBPE(vocab, merges, PRE_TOKENIZERS[pre], special, **special_ids)
    if kind == "llama":
        scores = get("tokenizer.ggml.scores", [0.0] * len(tokens))
        pieces = [Piece(t, float(s), PieceType(int(k))) for t, s, k in zip(tokens, scores, types)]
        model = SentencePieceModel(
            pieces,
            model_type="bpe",
            normalizer_name="identity",
            byte_fallback=any(p.type == PieceType.BYTE for p in pieces),
            add_dummy_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)),
            remove_extra_whitespaces=False,
        )
        return SentencePieceTokenizer(model)
    raise NotImplementedError(f"{path}: tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')")


def read_gguf_chat_template(path: str | Path, reader=None) -> str | None:
    """The chat template stored in the file (``tokenizer.chat_template``), or None."""
    return gguf_field(reader or open_gguf(path), "tokenizer.chat_template", None, path)


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


def write_gguf(
    config: LlamaConfig,
    weights: dict[str, torch.Tensor],
    file: Path,
    dtype: torch.dtype,
    tokenizer=None,
    chat_template: str | None = None,
) -> None:
    """Write ``weights`` (this package's names, float32) as one GGUF file, float32 or float16.

    Norms stay float32, as llama.cpp writes them. A tied model has no ``output.weight``: llama.cpp then
    reuses ``token_embd``, as SmolLM2's file does.
    """
    from gguf import GGUFWriter

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"GGUF export writes float32 or float16, got {dtype}")
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
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0 if dtype == torch.float32 else 1)
    if tokenizer is not None:
        add_gguf_tokenizer(writer, tokenizer, chat_template)
    for name, tensor in weights.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and dtype == torch.float16:
            array = array.astype(np.float16)
        writer.add_tensor(meta_to_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
