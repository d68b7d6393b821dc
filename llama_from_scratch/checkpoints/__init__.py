"""Real checkpoints: reading and writing the three formats the Llama family ships in.

One module per format, each holding its reading *and* its writing, tokenizer and chat template included:
:mod:`.hf` (Hugging Face: ``config.json`` + safetensors), :mod:`.meta` (Meta: ``params.json`` +
``consolidated.NN.pth`` shards) and :mod:`.gguf` (llama.cpp: one file, quantized or not). :mod:`.names`
is the one table of tensor names in all three spellings. :mod:`.load` builds a model from any of them
(``load_checkpoint``, ``load_pretrained``), :mod:`.save` writes any of them (``save_checkpoint``), both
through :mod:`.atomic` so that nothing is ever half-written. :mod:`.files` holds the rules every reader
follows with files that may be damaged or hostile: regular files only, JSON parsed with its faults named,
every value's type checked. :mod:`.offline` locates the course's offline checkpoint (``smollm2_path``).
"""

from .load import Pretrained, assemble, expected_shapes, latest_checkpoint, load_checkpoint, load_pretrained
from .offline import smollm2_path
from .save import FORMATS, save_checkpoint

__all__ = [
    "FORMATS",
    "Pretrained",
    "assemble",
    "expected_shapes",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "save_checkpoint",
    "smollm2_path",
]
