"""Command line: ``python -m llama_from_scratch COMMAND``.

Commands:
  presets             the LLaMA family: shape, parameters and weight memory of every preset
  info CHECKPOINT     load a checkpoint and describe it
  exercises [--check] generate exercises/ from solutions/ (run in the repository root)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import load_checkpoint
from .config import PRESETS
from .exercises import generate_exercises
from .model import count_parameters

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_from_scratch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="the LLaMA family table")
    info = commands.add_parser("info", help="load a checkpoint and describe it")
    info.add_argument("checkpoint", help="a Hugging Face model directory")
    exercises = commands.add_parser("exercises", help="generate exercises/ from solutions/")
    exercises.add_argument("--check", action="store_true", help="only report out-of-date exercises (exit 1 if any)")
    exercises.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    args = parser.parse_args(argv)

    if args.command == "presets":
        print(presets_table())
    elif args.command == "info":
        try:
            model = load_checkpoint(args.checkpoint, device="cpu")
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(model.config)
        print(f"{model.num_parameters():,} parameters")
    elif args.command == "exercises":
        if not (args.root / "solutions").is_dir():
            print(f"error: {args.root.resolve()} has no solutions/ folder; run this in the repository root", file=sys.stderr)
            return 1
        changed = generate_exercises(args.root, check=args.check)
        verb = "out of date" if args.check else "written"
        for path in changed:
            print(f"{verb}: {path}")
        if args.check and changed:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
