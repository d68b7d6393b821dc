"""``python -m llama_from_scratch``: the command line of :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
