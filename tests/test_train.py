"""Training: the schedule, the optimizer's groups, exact resumption, crash safety and data parallelism."""

import importlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from llama_from_scratch import Llama, LlamaConfig, load_checkpoint
from llama_from_scratch.training import checkpoint as train_checkpoint
from llama_from_scratch.training.checkpoint import RunFolder
from llama_from_scratch.training.dataset import TokenData, get_batch, read_tokens, write_tokens
from llama_from_scratch.training.train import (
    TextWindows,
    TrainConfig,
    configure_optimizer,
    evaluate_all,
    learning_rate,
    train,
    train_step,
)

MODEL = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=32)


def synthetic_data(n: int = 5000, seed: int = 0) -> TokenData:
    """A learnable stream: each token is the previous one plus 1 or 2 (mod 64)."""
    rng = np.random.default_rng(seed)
    tokens = np.cumsum(rng.integers(1, 3, size=n)) % 64
    return TokenData(tokens.astype(np.uint16), n_bytes=2 * n)


def new_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Llama:
    torch.manual_seed(seed)
    return Llama(MODEL).to(dtype)


def quick_config(**changes) -> TrainConfig:
    values = dict(
        steps=8,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        eval_every=2,
        eval_batches=2,
        checkpoint_every=2,
    )
    return TrainConfig(**{**values, **changes})


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    lrs = [learning_rate(s, config) for s in range(1000)]
    # Python floats (float64): the schedule's few operations round at 1e-16 relative; approx's default 1e-6
    # only absorbs that, while a step off by one moves the rate by 1% or more (warm-up) or 0.3% (mid-cosine).
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # then only falls
    assert learning_rate(550, config) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert learning_rate(1000, config) == pytest.approx(1e-4)


def test_the_floor_is_a_tenth_of_the_peak_unless_given():
    config = TrainConfig(lr=3e-3)
    assert config.min_lr == 3e-3 * 0.1  # the same float product as TrainConfig's default
    assert config.replace(lr=1e-2).min_lr == 1e-2 * 0.1  # a new peak brings its own floor, not the old one
    assert config.replace(steps=5).min_lr == config.min_lr
    assert config.replace(lr=1e-2, min_lr=0.0).min_lr == 0.0
    with pytest.raises(ValueError, match="0 <= min_lr <= lr"):
        config.replace(min_lr=1.0)


def test_a_run_folder_is_resumed_or_overwritten_not_both(tmp_path):
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        RunFolder(tmp_path, resume=True, overwrite=True)
    assert RunFolder(str(tmp_path), extra_files={"a": str(tmp_path / "a")}).extra_files == {"a": tmp_path / "a"}


def test_weight_decay_only_on_matrices_of_attention_and_feed_forward():
    model = Llama(MODEL.replace(tie_embeddings=True))
    decay, no_decay = configure_optimizer(model, quick_config()).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (".attention.w" in name or ".feed_forward.w" in name), name


def test_loss_falls_on_a_learnable_stream():
    history = train(new_model(), TextWindows(synthetic_data(), synthetic_data(seed=1)), quick_config(steps=60, lr=3e-2))
    assert history[0]["loss"] > math.log(64) - 0.5  # an untrained model guesses among 64 tokens
    assert history[-1]["val_loss"] < 1.5  # on the way to ln 2: each next token is one of two


def test_evaluate_all_predicts_every_token_of_the_split_once():
    data = synthetic_data(n=16 * 7 + 5)  # 7 full windows of 16 tokens and one of 4: 116 predictions
    model = new_model()
    tokens = torch.from_numpy(data.tokens.astype(np.int64))
    expected_sum = 0.0
    with torch.no_grad():  # consecutive windows of 16 tokens, each with a fresh context
        for start in range(0, len(tokens) - 1, 16):
            inputs, targets = tokens[start : start + 16], tokens[start + 1 : start + 17]
            inputs = inputs[: len(targets)]
            logits = model(inputs[None])[0]
            expected_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    expected = expected_sum / (len(tokens) - 1)
    # evaluate_all averages each batch's losses in float32 (up to 16 x 16 terms, rounding by at most 256 EPS / 2
    # relative) where the reference sums one window's 16: the two agree to float32 rounding of 256-term sums.
    rel = 16 * 16 * torch.finfo(torch.float32).eps
    for batch_size in (1, 4, 16):
        metrics = evaluate_all(model, data, seq_len=16, batch_size=batch_size)
        assert metrics["loss"] == pytest.approx(expected, rel=rel), batch_size
        assert metrics["bits_per_byte"] == pytest.approx(expected / math.log(2) / 2, rel=rel)


def test_resumed_run_repeats_the_uninterrupted_run_exactly(tmp_path):
    data, val = synthetic_data(), synthetic_data(seed=1)
    full_model = new_model()
    full = train(full_model, TextWindows(data, val), quick_config(), RunFolder(tmp_path / "full"))

    class Crash(Exception):
        pass

    def crash_at_step_6(step, metrics):
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(new_model(), TextWindows(data, val), quick_config(), RunFolder(tmp_path / "cut"), on_eval=crash_at_step_6)
    assert (tmp_path / "cut" / "latest").read_text().strip() == "step-0000004"
    resumed_model = new_model(seed=99)  # different initial weights: everything must come from the checkpoint
    resumed = train(resumed_model, TextWindows(data, val), quick_config(), RunFolder(tmp_path / "cut", resume=True))

    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    for name, p in full_model.named_parameters():
        assert torch.equal(p, resumed_model.get_parameter(name)), name


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    model, data = new_model(), synthetic_data()
    train(model, TextWindows(data), quick_config(steps=2), RunFolder(tmp_path))
    before = load_checkpoint(tmp_path, device="cpu")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the optimizer state

    monkeypatch.setattr(train_checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(model, TextWindows(data), quick_config(steps=4), RunFolder(tmp_path, resume=True))
    assert (tmp_path / "latest").read_text().strip() == "step-0000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-0000002"]  # no half-written folder
    after = load_checkpoint(tmp_path, device="cpu")
    for name, p in before.named_parameters():
        assert torch.equal(p, after.get_parameter(name))


def test_resuming_needs_a_matching_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(new_model(), TextWindows(synthetic_data()), quick_config(), RunFolder(tmp_path / "empty", resume=True))
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(tmp_path / "run"))
    other = Llama(MODEL.replace(n_layers=3))
    with pytest.raises(ValueError, match="different model"):
        train(other, TextWindows(synthetic_data()), quick_config(), RunFolder(tmp_path / "run", resume=True))
    with pytest.raises(ValueError, match="seq_len: 16 -> 8"):
        train(new_model(), TextWindows(synthetic_data()), quick_config(seq_len=8), RunFolder(tmp_path / "run", True))


def test_token_files_and_bad_data(tmp_path):
    path = write_tokens(tmp_path / "train.bin", [1, 2, 3, 4, 5], n_bytes=20)
    data = read_tokens(path)
    assert list(data.tokens) == [1, 2, 3, 4, 5] and data.bytes_per_token == 4.0
    with pytest.raises(ValueError, match="no tokens"):
        write_tokens(tmp_path / "empty.bin", [], n_bytes=0)
    with pytest.raises(ValueError, match="does not fit in data of 5 tokens"):
        get_batch(data, step=0, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="uint16"):
        write_tokens(tmp_path / "big.bin", [70000], n_bytes=1)
    path.write_bytes(path.read_bytes()[:4])
    with pytest.raises(ValueError, match="truncated"):
        read_tokens(path)


def test_batches_are_a_function_of_the_step_and_split_across_ranks():
    data = synthetic_data()
    x, y = get_batch(data, step=3, batch_size=4, seq_len=8, seed=5)
    assert torch.equal(x, get_batch(data, step=3, batch_size=4, seq_len=8, seed=5)[0])
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    halves = [get_batch(data, 3, 2, 8, seed=5, rank=r, world_size=2)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x)


def _ddp_worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from llama_from_scratch.training.distributed import leave_distributed

    model = new_model(dtype=torch.float64)  # train() sees the process group and trains on this rank's half
    history = train(model, TextWindows(synthetic_data()), quick_config(batch_size=2))
    losses = torch.tensor([r["loss"] for r in history], dtype=torch.float64)
    dist.all_reduce(losses)  # the global mean loss: each rank's mean over its half, averaged
    if rank == 0:
        out.write_text(json.dumps((losses / world_size).tolist()))
    leave_distributed()


def test_two_process_ddp_follows_the_single_process_trajectory(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), tmp_path / "ddp.json"), nprocs=2)
    torch.set_num_threads(1)
    single = train(new_model(dtype=torch.float64), TextWindows(synthetic_data()), quick_config(batch_size=4))
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    # Both runs in float64: averaging gradients across processes adds them in another order, and Adam
    # divides each gradient by its own size, which amplifies such rounding over the 8 steps. In float32
    # that reaches 1e-6 of the loss; in float64 (2.2e-16 relative) it stays far below 1e-9, while a
    # process training on the wrong half of the batch changes the loss by 1e-2.
    assert np.abs(np.array(ddp) - np.array([r["loss"] for r in single])).max() <= 1e-9


def test_optimizer_holds_only_the_parameters_that_train():
    """LoRA freezes the base model: the optimizer must keep no state (and do no decay) for frozen weights."""
    model = Llama(MODEL)
    for name, p in model.named_parameters():
        p.requires_grad = "layers.0.attention" in name
    groups = configure_optimizer(model, quick_config()).param_groups
    held = [p for group in groups for p in group["params"]]
    assert held and all(p.requires_grad for p in held)
    assert len(held) == sum(p.requires_grad for p in model.parameters())


def test_recipes_prepare_their_own_data_and_the_cli_offers_them():
    from llama_from_scratch.cli import parser
    from llama_from_scratch.training.recipes import RECIPES, PreparedData

    choices = next(a for a in parser()._subparsers._group_actions[0].choices["train"]._actions if a.dest == "recipe")
    assert list(choices.choices) == list(RECIPES)
    for recipe in RECIPES.values():
        assert callable(recipe.prepare_data) and recipe.prepare.__annotations__["return"] in (PreparedData, "PreparedData")


def test_resume_keeps_the_run_and_refuses_other_settings(tmp_path):
    """Only steps and the reporting cadence may change on resume; everything else names what changed."""
    data, resumed = TextWindows(synthetic_data()), RunFolder(tmp_path / "run", resume=True)
    train(new_model(), data, quick_config(steps=4), RunFolder(tmp_path / "run"))
    for change, message in (({"lr": 2e-2}, "lr: 0.01 -> 0.02"), ({"weight_decay": 0.0}, "weight_decay: 0.1 -> 0.0"),
                            ({"grad_clip": 0.5}, "grad_clip: 1.0 -> 0.5"), ({"warmup_steps": 3}, "warmup_steps: 2 -> 3")):
        with pytest.raises(ValueError, match=f"cannot resume with other settings \\({message}\\)"):
            train(new_model(), data, quick_config(steps=6, **change), resumed)
    longer = train(new_model(), data, quick_config(steps=6, eval_every=3), resumed)
    assert [r["step"] for r in longer] == list(range(6))
    with pytest.raises(ValueError, match="already reached step 6"):
        train(new_model(), data, quick_config(steps=6), resumed)


def test_a_used_folder_is_resumed_or_overwritten_never_mixed(tmp_path):
    run = tmp_path / "run"
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=6, checkpoint_every=2), RunFolder(run))
    with pytest.raises(FileExistsError, match="already holds a run \\(up to step-0000006\\).*--resume.*--overwrite"):
        train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(run))
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(run, overwrite=True))
    assert [p.name for p in train_checkpoint.checkpoints_of(run)] == ["step-0000002"]
    assert load_checkpoint(run, device="cpu") is not None


def test_old_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 100):
        (tmp_path / f"step-{step}").mkdir()  # names whose alphabetical order is not their order
    assert [p.name for p in train_checkpoint.checkpoints_of(tmp_path)] == ["step-9", "step-10", "step-100"]


def test_stale_staging_folders_of_a_killed_write_are_removed(tmp_path):
    run = tmp_path / "run"
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(run))
    (run / ".step-0000004.x1y2z3").mkdir()  # what `kill -9` during a write leaves
    (run / ".step-0000004.x1y2z3" / "model.safetensors").write_bytes(b"\0" * 1000)
    (run / ".latest.abc").mkdir()
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=4), RunFolder(run, resume=True))
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step-0000002", "step-0000004"]


def test_non_finite_settings_are_refused_and_a_non_finite_loss_stops_the_run(tmp_path, monkeypatch):
    for name in ("lr", "weight_decay", "beta2"):
        with pytest.raises(ValueError, match=f"TrainConfig.{name} must be a finite number"):
            quick_config(**{name: math.nan})
    with pytest.raises(ValueError, match="TrainConfig.lr must be a finite number, in float32 too, got inf"):
        quick_config(lr=math.inf, min_lr=0.0)
    run = tmp_path / "run"
    train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(run))
    train_module = importlib.import_module("llama_from_scratch.training.train")  # the module, not train()
    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", lambda *args: (math.nan, real_step(*args)[1]))
    with pytest.raises(ValueError, match=r"step 2: the loss is nan: training stopped.*step-0000002.*is intact"):
        train(new_model(), TextWindows(synthetic_data()), quick_config(steps=4), RunFolder(run, resume=True))
    assert train_checkpoint.latest_checkpoint(run).name == "step-0000002"
    load_checkpoint(run, device="cpu")


def test_train_step_clips_only_what_the_optimizer_updates():
    """A frozen weight holding a stale gradient (left by an earlier backward) must not enter the clipping norm."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    frozen, trainable = model[0], model[1]
    frozen.weight.grad = torch.full_like(frozen.weight, 1e6)  # stale: from before it was frozen
    for p in frozen.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def mse(m, inputs, targets):
        return torch.nn.functional.mse_loss(m(inputs), targets)

    _, grad_norm = train_step(model, optimizer, [(x, y)], lr=0.0, grad_clip=1.0, loss_fn=mse)
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in trainable.parameters()]))
    assert grad_norm == pytest.approx(expected.item(), rel=1e-6)  # the same float32 sum, in another order at most
