"""Fine-tuning a pretrained model: supervised (SFT) or from preferences (DPO), all weights or LoRA adapters.

The loop is pretraining's (:func:`llama_from_scratch.training.train.train`): AdamW, warm-up and cosine
schedule, gradient clipping, the progress bar, periodic validation, crash-safe checkpoints, exact
resumption, Ctrl-C saving a checkpoint. What changes is handed to it, as its data source
(:class:`.sft.SFTData`, :class:`.dpo.PreferenceData`) and its run folder:

* the batches: conversations padded on the right (:mod:`.sft`), or preference pairs, chosen and
  rejected answers in one batch (:mod:`.dpo`), drawn as a pure function of the step, so a resumed
  run draws what the uninterrupted one would have;
* the loss: next-token cross-entropy on the assistant's tokens (SFT), or the DPO loss against log-
  probabilities of the reference model, computed once before training (it never changes): with LoRA the
  policy itself with its adapters switched off, so no second copy of the model is ever held;
* what is trained: with ``method="lora"`` only the adapters (:mod:`.lora`), so the optimizer holds
  moments for a few million numbers, not for the whole model; with ``"full"`` every weight;
* what a checkpoint holds: the adapters alone, in PEFT's layout (:mod:`.adapter`), or the whole model;
* validation: held-out loss (SFT), or held-out DPO loss, reward margins and preference accuracy, plus
  whatever the caller measures (the task's accuracy);
* resumption: a LoRA checkpoint holds only the adapters, so it is only meaningful on the base it was
  trained on. Every checkpoint keeps the run's *identity* (:func:`run_identity`: a hash of the base
  weights, adapters merged in, and one of the training data), and a resume onto anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..chat import CHAT_TEMPLATES
from ..checkpoints.atomic import atomic_write
from ..checkpoints.hf import read_chat_template
from ..files import read_json
from ..checkpoints.load import latest_checkpoint
from ..errors import FormatError, is_finite_number
from ..model import Llama
from ..training.checkpoint import FULL_MODEL, ModelFiles, RunFolder
from ..training.train import TrainConfig, train
from .adapter import load_adapter, save_adapter
from .dpo import PreferenceData, reference_logprobs
from .lora import LORA_TARGETS, add_lora, merge_lora
from .sft import IGNORE_INDEX, Example, SFTData

METHODS = ("lora", "full")
OBJECTIVES = ("sft", "dpo")
LEARNING_RATES = {"lora": 1e-3, "full": 5e-5}  # each method's default peak: full fine-tuning moves every weight
DEFAULT_TEMPLATE = "chatml"  # for a checkpoint that has no chat template of its own
ADAPTER_FOLDER = "adapter"  # inside each checkpoint of a LoRA run
IDENTITY_FILE = "run_identity.json"  # inside each checkpoint: what the run fine-tunes, on what data


@dataclass
class FinetuneConfig(TrainConfig):
    """A fine-tuning run: :class:`TrainConfig`'s settings (with fine-tuning's defaults) and what to train how.

    ``seq_len`` is the longest example allowed, in tokens. ``lr`` defaults to the method's
    (:data:`LEARNING_RATES`: full fine-tuning moves every weight, gently), ``min_lr`` to a tenth of it.
    ``weight_decay`` defaults to 0: the update should stay small, and LoRA's ``B`` starts at zero anyway.
    ``beta`` is DPO's β, how far the policy may move from the reference; ``nll_weight`` adds the chosen
    answers' log-likelihood to DPO's loss (0: the paper's DPO; see :func:`.dpo.dpo_batch_loss`).
    ``template`` names the chat template of :data:`~llama_from_scratch.chat.CHAT_TEMPLATES` the data is
    written in; ``None``: the checkpoint's own (:meth:`chat_template`).
    """

    steps: int = 100
    batch_size: int = 8
    seq_len: int = 512
    lr: float | None = None
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    checkpoint_every: int = 50
    method: str = "lora"
    objective: str = "sft"
    rank: int = 8
    alpha: float = 16.0
    lora_dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    beta: float = 0.1
    nll_weight: float = 0.0
    template: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.objective not in OBJECTIVES:
            raise ValueError(
                f"FinetuneConfig needs method in {METHODS} and objective in {OBJECTIVES}, "
                f"got method={self.method!r}, objective={self.objective!r}"
            )
        if self.template is not None and self.template not in CHAT_TEMPLATES:
            raise ValueError(f"FinetuneConfig.template must be one of {tuple(CHAT_TEMPLATES)}, got {self.template!r}")
        if self.lr is None:
            self.lr = LEARNING_RATES[self.method]
        super().__post_init__()
        if not is_finite_number(self.beta) or self.beta <= 0:
            raise ValueError(f"FinetuneConfig.beta must be a positive number, got {self.beta!r}")
        if not is_finite_number(self.nll_weight) or self.nll_weight < 0:
            raise ValueError(f"FinetuneConfig.nll_weight must be a number >= 0, got {self.nll_weight!r}")

    def chat_template(self, checkpoint_template: str | None) -> str:
        """The template the run's conversations are written in: :attr:`template`, else the checkpoint's own
        (``checkpoint_template``), else :data:`DEFAULT_TEMPLATE`."""
        if self.template is not None:
            return CHAT_TEMPLATES[self.template]
        return checkpoint_template or CHAT_TEMPLATES[DEFAULT_TEMPLATE]


def write_adapter(model: Llama, folder: Path) -> None:
    save_adapter(model, Path(folder) / ADAPTER_FOLDER)


def read_adapter(model: Llama, checkpoint: Path) -> None:
    load_adapter(model, Path(checkpoint) / ADAPTER_FOLDER)


ADAPTER_ONLY = ModelFiles(write_adapter, read_adapter)  # a LoRA run's checkpoints: the base model is on disk already


def prepare_model(model: Llama, config: FinetuneConfig) -> int:
    """Make ``model`` trainable as ``config.method`` says; returns the number of trainable parameters."""
    if config.method == "lora":
        return add_lora(model, config.rank, config.alpha, config.targets, config.lora_dropout)
    model.requires_grad_(True)
    return model.num_parameters()


def check_lengths(examples: list[Example], config: FinetuneConfig, model: Llama, what: str) -> None:
    """Every example fits ``config.seq_len`` and the model's context, and has something to learn."""
    limit = min(config.seq_len, model.config.max_seq_len)
    for i, example in enumerate(examples):
        if len(example) - 1 > limit:
            raise ValueError(
                f"{what} {i} has {len(example)} tokens, more than the {limit} allowed "
                f"(seq_len={config.seq_len}, the model's max_seq_len={model.config.max_seq_len}); shorten it"
            )
        if all(label == IGNORE_INDEX for label in example.labels[1:]):
            raise ValueError(f"{what} {i} has no assistant token to learn from")


def weights_digest(model: Llama) -> str:
    """SHA-256 of ``model``'s configuration and of every weight's bytes (buffers included): the same model
    gives the same digest wherever it was loaded from; one changed weight gives another."""
    digest = hashlib.sha256(json.dumps(model.config.__dict__, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def data_digest(examples: list) -> str:
    """SHA-256 of the training examples' tokens and labels (:class:`Example`, or pairs of them for DPO)."""
    digest = hashlib.sha256()
    for item in examples:
        for example in item if isinstance(item, tuple) else (item,):
            digest.update(json.dumps([example.tokens, example.labels]).encode())
    return digest.hexdigest()


def run_identity(model: Llama, train_examples: list, base: str | None = None) -> dict[str, str]:
    """What a run starts from: the base model (``weights``: :func:`weights_digest`, before any adapter of
    this run), its training data (``data``) and, for people, ``base``: where the base came from."""
    return {"base": base or "(not given)", "weights": weights_digest(model), "data": data_digest(train_examples)}


def check_identity(out_dir: Path, identity: dict[str, str]) -> None:
    """Refuse to resume the run in ``out_dir`` from anything but the base and data it started from."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        return  # nothing to resume: train() says so
    path = checkpoint / IDENTITY_FILE
    if not path.exists():
        raise FormatError(f"{path}: missing, so this checkpoint cannot tell which base it fine-tunes; start a new run")
    saved = read_json(path)
    for key, what in (("weights", "base model (adapters merged in)"), ("data", "training data")):
        if saved.get(key) != identity[key]:
            raise ValueError(
                f"{checkpoint}: cannot resume: the run was trained with a different {what} "
                f"(the run's: {saved.get('base')}, {key} sha256 {str(saved.get(key))[:12]}...; "
                f"now: {identity['base']}, {identity[key][:12]}...). Resume with the run's own --base, "
                "--adapter and data, or start a new run (another --out, or --overwrite)"
            )


def identified_run_folder(
    model: Llama,
    train_examples: list,
    out_dir: str | Path,
    resume: bool,
    overwrite: bool,
    extra_files: dict[str, Path] | None,
    model_files: ModelFiles,
    base: str | None = None,
) -> RunFolder:
    """The :class:`RunFolder` of a run that fine-tunes ``model`` (the base, before any adapter of this run) on
    ``train_examples``: its identity (:func:`run_identity`) checked against the run's when resuming, written
    into ``out_dir`` and kept in every checkpoint."""
    out_dir = Path(out_dir)
    identity = run_identity(model, train_examples, base)
    if resume:
        check_identity(out_dir, identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / IDENTITY_FILE) as tmp:
        tmp.write_text(json.dumps(identity, indent=2) + "\n")
    extra_files = {**(extra_files or {}), IDENTITY_FILE: out_dir / IDENTITY_FILE}
    return RunFolder(out_dir, resume, overwrite, extra_files, model_files)


def finetune(
    model: Llama,
    train_examples: list,
    val_examples: list,
    config: FinetuneConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    pad_id: int = 0,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    measure: Callable[[Llama], dict[str, float]] | None = None,
    extra_files: dict[str, Path] | None = None,
    base: str | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place; returns the history (as :func:`~llama_from_scratch.training.train.train`).

    ``train_examples`` / ``val_examples``: :class:`~.sft.Example` for ``objective="sft"``, ``(chosen, rejected)``
    pairs of them for ``"dpo"``. ``measure(model)`` adds its figures to every validation (the task's
    accuracy, say). ``model`` is the base model: with ``resume`` the adapters (or weights) and the
    optimizer state come from ``out_dir``'s newest checkpoint, which must have been trained from this same
    base and data (:func:`run_identity`; ``base`` says where the model came from, for the error message).
    """
    if not train_examples or not val_examples:
        raise ValueError("fine-tuning needs training and validation examples; one of them is empty")
    if out_dir is None and (resume or overwrite):
        raise ValueError("resume and overwrite need out_dir, the run's folder")
    dpo = config.objective == "dpo"
    for what, items in (("training example", train_examples), ("validation example", val_examples)):
        check_lengths([e for item in items for e in (item if dpo else (item,))], config, model, what)
    folder = None
    if out_dir is not None:  # before any adapter is added: the identity is the base's
        model_files = ADAPTER_ONLY if config.method == "lora" else FULL_MODEL
        folder = identified_run_folder(model, train_examples, out_dir, resume, overwrite, extra_files, model_files, base)
    prepare_model(model, config)
    if dpo:  # the model fine-tuning starts from (with LoRA: the adapters off), before any step or resumed state
        reference = reference_logprobs(model, train_examples, config.batch_size, pad_id)
        # Validating on the training pairs themselves (a tiny demonstration run): the same numbers, computed once
        same = val_examples is train_examples
        val_reference = reference if same else reference_logprobs(model, val_examples, config.batch_size, pad_id)
    if dpo:
        data = PreferenceData(
            train_examples, val_examples, reference, val_reference, config.beta, config.nll_weight, pad_id, measure
        )
    else:
        data = SFTData(train_examples, val_examples, pad_id, measure)
    return train(model, data, config, folder, on_eval)


def run_files(out_dir: Path, tokenizer, chat_template: str) -> dict[str, Path]:
    """Write the tokenizer and the chat template the run trains with into ``out_dir/tokenizer``; return them
    as the files every checkpoint keeps, so that a checkpoint (or its adapter) is usable alone."""
    from ..checkpoints.hf import write_hf_tokenizer

    folder = Path(out_dir) / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    write_hf_tokenizer(tokenizer, folder, chat_template)
    return {path.name: path for path in sorted(folder.iterdir())}


def apply_adapters(pretrained, adapters: list[Path] | None) -> None:
    """Load each LoRA adapter (or LoRA run) in turn into ``pretrained`` (a loaded checkpoint) and merge it into
    the weights: the fine-tuned model at the base's speed. The chat template a run trained with, saved beside
    its adapter, replaces the checkpoint's."""
    for path in adapters or []:
        adapter = find_adapter(path)
        merge_lora(load_adapter(pretrained.model, adapter))
        pretrained.chat_template = read_chat_template(adapter.parent) or pretrained.chat_template


def find_adapter(path: str | Path) -> Path:
    """The adapter folder ``path`` names: an adapter itself, a checkpoint of a LoRA run, or the run's folder
    (its newest checkpoint)."""
    from ..checkpoints.load import LATEST, latest_checkpoint

    path = Path(path)
    if path.is_dir() and (path / LATEST).exists():
        path = latest_checkpoint(path)
    if (path / ADAPTER_FOLDER).is_dir():
        path = path / ADAPTER_FOLDER
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path}: no adapter_config.json: not a LoRA adapter, a LoRA checkpoint or its run")
    return path
