"""The course's own helpers: :mod:`.checks` (feedback on the exercises), :mod:`.exercises` (generating the
learners' notebooks from the solutions) and :mod:`.viz` (the pictures the notebooks draw)."""
