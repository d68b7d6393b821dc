"""A C++ kernel for int4 decoding: ``torch.ops.llama_from_scratch.int4_matmul``, built on first use.

Decoding one token multiplies each weight matrix by one row ``x``: every weight is read once and used
once, so the speed is set by how fast the weights stream in and are turned into products. Compiled, the
pure-PyTorch path (:meth:`.Int4Linear.matmul_one_row`) unpacks each 4-bit code to a float, scales it and
multiplies it by a float ``x_i``: eight floats per 32-bit lane, with a conversion, a multiply-add for the
scale and one for the product per weight. llama.cpp does it otherwise, and so does this kernel
(:file:`int4_kernel.cpp`):

1. quantize ``x`` to int8 in blocks of 32 (llama.cpp's Q8_1): ``d = max|x| / 127``, ``a = round(x / d)``,
   and each block's sum ``S = d * sum a``;
2. multiply codes by ``a`` as *integers*, 32 per instruction: AVX2's ``_mm256_maddubs_epi16`` takes 32
   unsigned bytes (the codes, 0..15) and 32 signed bytes (``a``), multiplies them and adds neighbours into
   16-bit sums; ``_mm256_madd_epi16`` by ones adds neighbours again into 32-bit ones;
3. apply the scales once per block of 32, not once per weight::

       sum_i (s c_i + m) x_i  ~  sum_i (s c_i + m) d a_i  =  s * sum_blocks d * (sum_i c_i a_i)  +  m * sum_blocks S

Blocks of 32 rather than one scale per row: an LLM's activations have outlier channels (a few inputs 100x
the others); with one scale per row they would round every other input of the row to a few levels, with
blocks only their own 32. Blocks of 32 also line up with every group size (32, 64, 128).

What it costs: the kernel computes ``W`` times the rounded ``x``, ``d * a``, off by at most ``d / 2`` per input,
so an output moves by at most ``sum_i |w_i| d_i / 2``: :func:`int8_error_bound`.

Portable C++ where the CPU has no AVX2. When the kernel cannot be built (no compiler, no ninja, a failed
build) a one-line warning says so and :class:`.Int4Linear` keeps the pure-PyTorch path;
``LLAMA_FROM_SCRATCH_INT4_KERNEL=0`` forces that path. The build is cached per user in
``~/.cache/llama_from_scratch/`` (``$XDG_CACHE_HOME``), one folder per PyTorch version and instruction set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from .packing import unpack_int4

SOURCE = Path(__file__).with_name("int4_kernel.cpp")
BLOCK = 32  # activations per int8 scale (kBlock in the .cpp)
SWITCH = "LLAMA_FROM_SCRATCH_INT4_KERNEL"  # "0": never use the kernel
MAX_ROWS = 4  # decode-shaped (a few sequences, a speculative check); prompts go to dequantize-then-BLAS, exact

_built: bool | None = None  # None: not tried yet in this process


def avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA, as PyTorch detected it (an AVX-512 CPU has both)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def cache_dir() -> Path:
    """Where builds are kept: ``$XDG_CACHE_HOME`` (default ``~/.cache``) ``/llama_from_scratch``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama_from_scratch"


def build(source: Path = SOURCE, build_dir: Path | None = None) -> bool:
    """Compile ``source`` (unless a cached build is current) and load it: True when the op is registered.

    On failure it warns in one line and returns False. ``build_dir`` defaults to a folder of :func:`cache_dir`
    named after the PyTorch version and instruction set.
    """
    from torch.utils import cpp_extension  # imports setuptools: only when a build is wanted

    flags = ["-O3", "-fopenmp"] + (["-mavx2", "-mfma"] if avx2() else [])
    isa = "avx2" if avx2() else "portable"
    build_dir = build_dir or cache_dir() / f"int4_kernel-torch{torch.__version__}-{isa}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return _fallback(f"no C++ compiler ({compiler}) on PATH")
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        with _ninja_on_path(), _build_lock(build_dir):
            cpp_extension.load(
                "llama_from_scratch_int4_kernel",
                [str(source)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,  # the library registers the op itself (TORCH_LIBRARY)
            )
    except Exception as error:  # a compiler error, a missing ninja, an unwritable cache: all mean "no kernel"
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return _fallback(reason)
    torch.library.register_fake("llama_from_scratch::int4_matmul")(_shape_only)
    return True


def available() -> bool:
    """Whether :class:`.Int4Linear` should use :func:`int4_matmul`: not switched off by
    ``LLAMA_FROM_SCRATCH_INT4_KERNEL=0``, and built."""
    return os.environ.get(SWITCH) != "0" and built()


def built() -> bool:
    """Whether the op is registered: the first call of a process builds (or loads) it, later calls reuse the answer."""
    global _built
    if _built is None:
        _built = build()
    return _built


def int4_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """``x @ W.T`` for an :class:`.Int4Linear`'s buffers: ``(rows, in_features)`` float32 -> ``(rows, out_features)``."""
    if not built():
        raise RuntimeError("int4_matmul: the kernel could not be built here (see the warning); Int4Linear falls back")
    return torch.ops.llama_from_scratch.int4_matmul(x, qweight, scales, mins, group_size)


def int8_error_bound(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """``(rows, out_features)`` float64: how far :func:`int4_matmul` may be from ``x @ W.T`` (``W`` the dequantized
    weight, products in float64), for the same arguments.

    The kernel replaces each input x_i by ``d a_i``, a = round(x / d), d = max|x| / 127 over x_i's block of 32
    inputs, and computes the weight ``w_i = s c_i + m`` (code c_i in 0..15; m = -8 s when symmetric) times it:

        y_kernel - y = sum_i w_i (d a_i - x_i),     |d a_i - x_i| <= d / 2   (rounding to nearest)

    so ``|y_kernel - y| <= sum_i |w_i| d_i / 2``: the int8 term, at most 1/254 of ``sum_i |w_i| max|x|``. On top
    come float32 roundings of the two parts it is computed in, ``s * sum d (sum c a)`` and ``m * sum S``: ``s * d``,
    ``m * S`` and ``S = d * sum a`` (1 u each), and the accumulation of at most K / 32 block terms and as many group
    terms, each bounded by ``(|s c_i| + |m|) |d a_i|`` summed over its inputs (with ``|d a_i| <= |x_i| + d_i``):
    ``(K / 16 + 64) u`` times that sum, three orders of magnitude below the int8 term.
    """
    rows, in_features = x.shape
    out_features, groups = scales.shape
    padded = torch.nn.functional.pad(x.double(), (0, groups * group_size - in_features))  # (rows, K)
    d = (padded.view(rows, -1, BLOCK).abs().amax(-1) / 127).repeat_interleave(BLOCK, dim=-1)  # (rows, K): d_i
    codes = unpack_int4(qweight.view(out_features, groups, -1)).double()  # (out, groups, group_size)
    s = scales.double()[..., None]
    m = mins.double()[..., None] if mins is not None else -8 * s
    w = (s * codes + m).view(out_features, -1)  # (out, K): w_i, the padding included (it meets zeros)
    parts = (s * codes).abs() + m.abs()  # (out, groups, group_size): |s c_i| + |m|
    u = 2.0**-24  # float32's unit roundoff
    return d @ w.abs().T / 2 + (padded.shape[1] / 16 + 64) * u * ((padded.abs() + d) @ parts.view(out_features, -1).T)


def _shape_only(x, qweight, scales, mins, group_size):
    """The op's output without computing it, for ``torch.compile`` to trace through the call."""
    return x.new_empty(x.shape[0], qweight.shape[0])


def _fallback(reason: str) -> bool:
    warnings.warn(f"int4 kernel not built ({reason}); Int4Linear uses its pure-PyTorch path", stacklevel=3)
    return False


@contextlib.contextmanager
def _ninja_on_path():
    """``cpp_extension`` runs ``ninja`` from PATH; the ``ninja`` package (a dependency) installs it next to the
    interpreter, which is not on PATH when the virtual environment is not activated."""
    if shutil.which("ninja") is not None:
        yield
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """``cpp_extension`` guards a build folder with a lock *file*; a process killed mid-build leaves it behind and
    every later build waits forever. An OS lock (released when its process dies) is taken around the build;
    whoever holds it knows that a leftover lock file is stale, and removes it."""
    try:
        import fcntl
    except ImportError:  # Windows: cpp_extension's own lock file only
        yield
        return
    with open(build_dir / "build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
