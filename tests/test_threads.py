"""configure_threads: PyTorch's thread count less the busy cores, unless someone chose the count."""

import pytest
import torch

from llama_from_scratch import device
from llama_from_scratch.device import choose_num_threads, configure_threads


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    for name in ("LLAMA_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_busy_cores_are_left_out(monkeypatch):
    monkeypatch.setattr(device, "_STARTING_THREADS", 4)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert choose_num_threads(busy=0.0) == 4
    assert choose_num_threads(busy=1.0) == 3
    assert choose_num_threads(busy=2.6) == 1
    assert choose_num_threads(busy=7.0) == 1  # never fewer than one
    monkeypatch.setattr(device, "_STARTING_THREADS", 2)  # never more than PyTorch's own choice
    assert choose_num_threads(busy=0.0) == 2


def test_the_measured_load_is_a_number_of_cpus():
    import os

    assert 0.0 <= device.busy_cpus(interval=0.05) <= (os.cpu_count() or 1) + 0.5


def test_an_explicit_count_wins(monkeypatch):
    monkeypatch.setenv("LLAMA_THREADS", "1")
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("LLAMA_THREADS", "zero")
    with pytest.raises(ValueError, match="LLAMA_THREADS='zero'"):
        configure_threads()


def test_other_choices_are_left_alone(monkeypatch):
    monkeypatch.setattr(device, "choose_num_threads", lambda: 1)
    monkeypatch.setattr(device, "_STARTING_THREADS", 3)
    monkeypatch.setattr(device, "_chosen", None)
    torch.set_num_threads(2)  # someone's torch.set_num_threads(2): neither PyTorch's count nor ours
    assert configure_threads() == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads() == 3 and torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert configure_threads() == 1 and torch.get_num_threads() == 1  # PyTorch's own count: ours replaces it
    assert configure_threads() == 1  # and ours again (the machine's load may have changed)
