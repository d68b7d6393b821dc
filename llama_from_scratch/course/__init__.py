"""The course's own helpers: :mod:`.checks` (feedback on the exercises, with :mod:`.feedback`, the mistakes
of :mod:`.diagnosis` and the rules of :mod:`.rules`), :mod:`.exercises` (generating the learners' notebooks
from the solutions, and their working copies) and :mod:`.viz` (the pictures the notebooks draw).

Every notebook and exercise imports these helpers in its set-up cell, so importing them also chooses
PyTorch's CPU thread count (:func:`llama_from_scratch.device.configure_threads`: the cores that are not busy,
unless ``LLAMA_THREADS``, ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` chose).
"""

from ..device import configure_threads

configure_threads()
