"""The code sandbox: every hostile program is a failed sample within its limits, the harness goes on, and
nothing outside the program's temporary directory changes. Each test starts a few interpreters: slow."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llama_from_scratch.evaluation import sandbox
from llama_from_scratch.evaluation.humaneval import program, read_problems
from llama_from_scratch.evaluation.sandbox import Limits, isolation, run_program

# Short limits keep the tests fast; the wall clock allows for an interpreter start on a busy 2-core machine.
LIMITS = Limits(wall_seconds=4.0, cpu_seconds=2, memory_bytes=1 * 2**30)
DEADLINE = LIMITS.wall_seconds + 10.0  # the limit, plus killing the group and cleaning up, with room for a busy machine

HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "sleeping forever": "import time\ntime.sleep(10**6)\n",
    "a looping child": "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'while True: pass'])\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "multiprocessing": "import multiprocessing as m\nm.Process(target=print).start()\n",
    "10 GB allocation": "x = bytearray(10 * 2**30)\n",
    "socket": "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
    "os.kill of the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "process group of the parent": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
    "exit before the tests": "import sys\nsys.exit(0)\nassert False\n",
    "ctypes": "import ctypes\nctypes.CDLL(None).kill(os.getppid(), 9)\n",
}


def snapshot(folder) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(params=["isolated", "same user"])
def mode(request, monkeypatch):
    """The sandbox as this machine allows it, and as it is for an ordinary user: the harness's own user, no
    network namespace, only the resource limits, the process group and the audit hook."""
    if request.param == "same user":
        plain = sandbox.Isolation(sys.executable, None, False)
        monkeypatch.setattr(sandbox, "isolation", lambda: plain)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_fail_within_the_limits(name, mode, tmp_path):
    (tmp_path / "keep.txt").write_text("untouched")
    before = snapshot(tmp_path)
    started = time.monotonic()
    outcome = run_program(HOSTILE[name], LIMITS)
    assert not outcome.passed, outcome
    assert time.monotonic() - started < DEADLINE
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_files_outside_the_directory_are_neither_written_nor_read(mode, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the harness's secret")
    os.chmod(secret, 0o644)  # readable by any user: only the sandbox's own rules keep it away
    before = snapshot(tmp_path)
    for code in (
        f"print(open({str(secret)!r}).read())",
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
        f"open({str(secret)!r}, 'a').write('x')",
        f"import os\nos.remove({str(secret)!r})",
        f"import os\nos.rename({str(secret)!r}, 'stolen.txt')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "open('/tmp/sandbox-escape.txt', 'w').write('x')",
    ):
        outcome = run_program(code, LIMITS)
        assert not outcome.passed and "not allowed" in outcome.stderr, (code, outcome)
    assert snapshot(tmp_path) == before and not os.path.exists("/tmp/sandbox-escape.txt")


@pytest.mark.slow
def test_its_own_directory_is_writable_and_every_humaneval_reference_passes():
    assert run_program("open('out.txt', 'w').write('x')\nassert open('out.txt').read() == 'x'\n", LIMITS).passed
    problems = read_problems()
    failed = [p.name for p in problems if not run_program(program(p, p.solution), LIMITS).passed]
    assert failed == [], "the sandbox refuses something a correct solution needs"
    assert not run_program(program(problems[0], "    return None\n"), LIMITS).passed


def sandboxed_children() -> dict[int, tuple[str, int]]:
    """Running sandboxed programs (their command line holds the guard), by pid: their network namespace and uid."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"sandbox: " in open(f"/proc/{entry}/cmdline", "rb").read():
                status = open(f"/proc/{entry}/status").read()
                uid = int(status.split("\nUid:")[1].split()[0])
                found[int(entry)] = (os.readlink(f"/proc/{entry}/ns/net"), uid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # a process that ended meanwhile
    return found


@pytest.mark.slow
def test_the_kernel_enforces_what_the_audit_hook_cannot_be_trusted_with():
    """As root, seen from outside: the program runs as nobody, in a network namespace of its own."""
    found = isolation()
    if found.user is None:
        pytest.skip(
            "not root: no unprivileged user to switch to, nor a network namespace (see the sandbox's docstring)"
        )
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_program, "import time\ntime.sleep(60)\n", LIMITS)
        children: dict[int, tuple[str, int]] = {}
        while not children and not running.done():
            children = sandboxed_children()
        assert not running.result().passed  # killed at the wall-clock limit
    assert children, "the sandboxed program was not seen running"
    own_namespace = os.readlink("/proc/self/ns/net")
    for namespace, uid in children.values():
        assert uid == found.user.pw_uid
        assert namespace != own_namespace or not found.network
