"""``python -m llama_from_scratch``: the command line of :mod:`.cli`."""

import signal
import sys

from .cli import main

if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ctrl-C is KeyboardInterrupt again, which main reports
    signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())
