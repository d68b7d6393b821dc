"""Writing a file or a folder so that nobody ever sees it half-written.

A process can die at any moment: killed, out of disk, a power cut. Writing a
checkpoint straight to its final name would then leave a file that looks
complete and is not. Instead everything is written under a temporary,
hidden name next to the target (``.NAME.xxxxxx``) and renamed to ``NAME``
only when complete. A rename within one folder is atomic: the name points to
the old version or to the new one, never to a mixture.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """Give a temporary path to write into; move it to ``path`` when the ``with`` block ends without error.

    ``directory=True`` gives a folder to fill, else a file name to write. An existing ``path`` is replaced.
    On an error nothing at ``path`` changes and the temporary copy is removed::

        with atomic_write(run_dir / "latest") as tmp:
            tmp.write_text("step-0000500\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = staging if directory else staging / path.name
    try:
        yield target
        if directory and path.is_dir():
            shutil.rmtree(path)  # a folder cannot be renamed over another one
        target.replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
