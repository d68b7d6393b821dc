"""The course's own helpers: the exercise checks, one module per chapter, :mod:`.exercises` (generating the
learners' notebooks from the solutions, and their working copies) and :mod:`.viz` (the pictures the notebooks draw).

Each chapter's module holds its checks and its catalogue of common mistakes: :mod:`.tokenizer_checks` (01),
:mod:`.rmsnorm_checks` (02), :mod:`.rope_checks` (03), :mod:`.attention_checks` (04), :mod:`.model_checks` (05),
:mod:`.generation_checks` (06), :mod:`.training_checks` (07), :mod:`.checkpoints_checks` (08),
:mod:`.quantization_checks` (09), :mod:`.finetuning_checks` (10), :mod:`.long_context_checks` (11) and
:mod:`.evaluation_checks` (12). They share
:mod:`.feedback` (the check skeleton: call, compare, name the mistake, print ✓) and :mod:`.rules` (the calls an
exercise forbids); :mod:`.chapters` lists every chapter's notebooks, exercises, checks and mistakes, which
``tests/test_course_checks.py`` runs.

Every notebook and exercise imports these helpers in its set-up cell, so importing them also chooses
PyTorch's CPU thread count (:func:`llama_from_scratch.device.configure_threads`: the cores that are not busy,
unless ``LLAMA_THREADS``, ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` chose).
"""

from ..device import configure_threads

configure_threads()
