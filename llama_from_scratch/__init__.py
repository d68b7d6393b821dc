"""llama-from-scratch: a LLaMA-family language model, one idea per module.

The model core sits at the top, in the order of the course: ``config``,
``rmsnorm``, ``rope`` (with ``rope_scaling``, chapter 11's longer contexts), ``feedforward``, ``attention``,
``kv_cache``, ``model`` (with ``cross_entropy``, the training loss it computes),
``generate`` (with ``chat``'s templates, and ``speculative`` decoding), ``device``; ``errors`` and ``files``
(the rules for reading untrusted files). The core imports no subpackage. Everything else lives
in subpackages named after what it is, each importing only the core and the subpackages listed before it
(``tests/test_layers.py`` checks it): quantization, tokenization, checkpoints, training, then
finetuning and long_context, then evaluation, then course, and ``cli`` on top.

* ``quantization``: int8 / int4 weights swapped in from outside the model,
  and GGUF's block formats written from scratch;
* ``tokenization``: BPE (the merge operation, a trainer), Llama's SentencePiece
  format and encoder, byte-level BPE, the tokenizer side of chat;
* ``checkpoints``: the Hugging Face, Meta, GGUF and quantized formats, each read and
  written in one module; ``load_checkpoint``, ``load_tokenizer``, ``load_pretrained``, ``save_checkpoint``;
* ``training``: the corpus, token files and batches, the training loop,
  training checkpoints, data parallelism, recipes;
* ``finetuning``: LoRA (PEFT's adapter layout), supervised fine-tuning with
  the loss on the answers only, DPO, the "which play?" task;
* ``long_context``: FlashAttention's tiled online softmax, the passkey test,
  position interpolation's fine-tune;
* ``evaluation``: benchmarks scored as the LLaMA paper does (likelihood multiple choice, exact match,
  pass@k with a code sandbox), few-shot prompts, standard errors, contamination, report cards;
* ``course``: exercise checks, exercise generation, pictures.

``cli`` is the command line (``python -m llama_from_scratch``); ``errors``
holds :class:`FormatError`, raised by every reader for a broken file; ``swap``
replaces layers of a model from the outside (quantization and LoRA both use it).
"""

import signal
import sys

# `python -m llama_from_scratch` is starting (Python sets argv[0] so meanwhile), with Ctrl-C not ignored
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:

    def _interrupted_while_starting(signum, frame):
        """Ctrl-C while torch imports (a second or two): one line, not a traceback from deep in an import.
        ``__main__`` restores Python's own handler once the command line is ready to catch it.

        It exits at once (``os._exit``): nothing has started that needs cleaning up, and an exception raised
        here could land in library code that swallows it (a ``SystemExit`` once vanished in torch's import,
        and the command ran on with status 0)."""
        import os

        print("\ninterrupted", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_while_starting)

from .attention import Attention, attention_weights, causal_mask, repeat_kv
from .checkpoints import load_checkpoint, load_pretrained, load_tokenizer, save_checkpoint
from .config import PRESETS, LlamaConfig, ffn_hidden_dim
from .cross_entropy import linear_cross_entropy
from .device import default_device, default_dtype
from .errors import FormatError
from .feedforward import SwiGLU
from .generate import (
    GenerationConfig,
    decode_one_token,
    generate,
    generate_batch,
    generate_stream,
    left_pad,
    next_token_probabilities,
    prefill,
    sample_next_token,
    top_p_filter,
)
from .kv_cache import KVCache, kv_cache_bytes
from .model import Llama, TransformerBlock, count_parameters, parameters_by_component
from .rmsnorm import RMSNorm, rms_norm
from .rope import (
    apply_rope,
    apply_rope_complex,
    apply_rope_half,
    half_to_interleaved,
    interleaved_to_half,
    rope_cos_sin,
    rope_frequencies,
)
from .tokenization import ByteLevelBPE, SentencePieceTokenizer, Tokenizer, train_bpe
from .training import RunFolder, TextWindows, TrainConfig, shakespeare, train

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Attention",
    "ByteLevelBPE",
    "FormatError",
    "GenerationConfig",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "RunFolder",
    "SentencePieceTokenizer",
    "SwiGLU",
    "TextWindows",
    "Tokenizer",
    "TrainConfig",
    "TransformerBlock",
    "apply_rope",
    "apply_rope_complex",
    "apply_rope_half",
    "attention_weights",
    "causal_mask",
    "count_parameters",
    "decode_one_token",
    "default_device",
    "default_dtype",
    "ffn_hidden_dim",
    "generate",
    "generate_batch",
    "generate_stream",
    "half_to_interleaved",
    "interleaved_to_half",
    "kv_cache_bytes",
    "left_pad",
    "linear_cross_entropy",
    "load_checkpoint",
    "load_pretrained",
    "load_tokenizer",
    "next_token_probabilities",
    "parameters_by_component",
    "prefill",
    "repeat_kv",
    "rms_norm",
    "rope_cos_sin",
    "rope_frequencies",
    "sample_next_token",
    "save_checkpoint",
    "shakespeare",
    "top_p_filter",
    "train",
    "train_bpe",
]
