"""The package's layers: who may import whom, read from the source with ``ast`` (imports inside functions too).

From the bottom up: the core (the top-level modules: config, model, rope, rope_scaling, chat templates,
errors, files, ...), then ``quantization`` (number formats, quantized layers), ``tokenization``,
``checkpoints`` (which reads and writes both), ``systems`` (mixed precision, memory and FLOPs
accounting, scaling laws), ``training``, then ``finetuning`` and ``long_context`` (which
run the training loop), ``evaluation`` (which measures any of their models), ``alignment`` (RLHF, which
scores with evaluation's tasks) and ``serving`` (which serves them), ``course`` and, on top, ``cli``. A module
imports only its own layer's package and
the layers below it; nothing imports ``cli``; and there is no import cycle, not even through an import
written inside a function to dodge one. A new subpackage must be given its place in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llama_from_scratch

PACKAGE = "llama_from_scratch"
CORE = "core"  # the package's top-level modules
# Bottom to top. Packages in one tuple share a layer: neither may import the other.
LAYERS: list[tuple[str, ...]] = [
    (CORE,),
    ("quantization",),
    ("tokenization",),
    ("checkpoints",),
    ("systems",),
    ("training",),
    ("finetuning", "long_context"),
    ("evaluation",),
    ("alignment", "serving"),
    ("course",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name (a package by its own name) -> file."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its file (top level, functions, TYPE_CHECKING)."""
    files = modules(root, package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        # A relative import counts from the module's package: the module itself if it is an __init__.
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # ``from ..x import y``: x counted from the module's package, one level up per dot
                    base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])])
                # y is a module of x, or a name defined in x
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target not in files and "." in target:  # ``import package.module.name``: the module
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


ROOT = Path(llama_from_scratch.__file__).parent
FILES = modules(ROOT)
GRAPH = import_graph(ROOT)


def layer(module: str) -> str:
    """The layer a module belongs to: its subpackage, ``cli``, the core, or ``root`` (re-exports, ``-m``)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "root"  # the package's __init__ (re-exports) and ``python -m``: above every layer
    if len(parts) == 2 and parts[1] != "cli" and FILES[module].name != "__init__.py":
        return CORE
    return parts[1]


def edges() -> list[tuple[str, str]]:
    return [(source, target) for source, targets in sorted(GRAPH.items()) for target in sorted(targets)]


def test_no_import_cycle_even_through_imports_inside_functions():
    found = cycles(GRAPH)
    assert not found, "import cycles, each through these modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_core_imports_no_subpackage():
    wrong = [f"{s} -> {t}" for s, t in edges() if layer(s) == CORE and layer(t) != CORE]
    assert not wrong, (
        "top-level modules importing a subpackage (only __init__'s re-exports and cli may):\n" + "\n".join(wrong)
    )


def test_no_module_imports_the_command_line():
    wrong = [f"{s} -> {t}" for s, t in edges() if layer(t) == "cli" and s != f"{PACKAGE}.__main__"]
    assert not wrong, "modules importing cli (the command line is an edge, nothing builds on it):\n" + "\n".join(wrong)


def test_each_subpackage_imports_only_the_layers_below_it():
    wrong = [
        f"{s} -> {t} ({layer(s)} may import only {', '.join(n for names in LAYERS[: RANK[layer(s)]] for n in names)})"
        for s, t in edges()
        if layer(s) not in (CORE, "cli", "root")
        and layer(t) != layer(s)
        and RANK.get(layer(t), len(LAYERS)) >= RANK[layer(s)]  # the package's __init__ ("root") is above all
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_every_subpackage_has_its_place_in_the_layers():
    subpackages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert subpackages - set(RANK) == set(), "add these subpackages to LAYERS"
    assert {name for name in RANK if name not in (CORE, "cli")} - subpackages == set(), "LAYERS names no such package"


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text("def f():\n    from .sub.reader import read\n    return read\n")
    (package / "sub" / "__init__.py").write_text("from .reader import read\n")
    (package / "sub" / "reader.py").write_text("from ..core import f\n\ndef read():\n    import pkg.core\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.core"] == {"pkg.sub.reader"}
    assert graph["pkg.sub"] == {"pkg.sub.reader"}
    assert graph["pkg.sub.reader"] == {"pkg.core"}
    assert cycles(graph) == [["pkg.core", "pkg.sub.reader"]]
