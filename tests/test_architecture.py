"""The house rules, checked on the source: what the command line may import, imports point one way,
modules stay small, only the interface modules import click and rich, and the core never prints."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecephys_dl.errors import ExitCode

PACKAGE = Path(__file__).resolve().parent.parent / "ecephys_dl"
README = PACKAGE.parent / "README.md"
CORE = sorted(p for p in PACKAGE.rglob("*.py") if "replica" not in p.relative_to(PACKAGE).parts)
INTERFACE = {"cli", "ui", "progress"}  # the modules that speak to people


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports at run time (type-checking imports left out), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:  # `from ecephys_dl import verify` imports a module
                yield f"{node.module}.{alias.name}", node.lineno


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m, _ in _imports(path) if m in modules and m != name} for name, path in modules.items()}


# The transfer engine, planning, the HTTP policy and the clients: the CLI reaches them only through fetch.py.
ENGINE = ["transfer", "session", "answers", "pieces", "wire", "writer", "checkpoint", "facts", "slots", "shared", "delivery",
          "plan", "retry", "bodies", "redirects", "client", "queries", "rma", "s3", "warehouse", "mirror", "dandi", "dandisets",
          "worker", "routing", "health", "audit"]  # fmt: skip


@pytest.mark.parametrize("forbidden", ENGINE)
def test_the_command_line_imports_no_engine_module(forbidden: str) -> None:
    """The CLI parses, calls and renders: it never reaches into the transfer engine, HTTP, planning or the clients."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        found = [line for module, line in _imports(path) if module == f"ecephys_dl.{forbidden}" or module.startswith(f"ecephys_dl.{forbidden}.")]
        assert not found, f"{path.name} imports ecephys_dl.{forbidden} (line {found[0]})"


def test_there_are_no_import_loops() -> None:
    """No chain of imports (lazy ones included) leads from a module back to itself."""
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in sorted(graph[name]):
            if child.startswith(name + "."):
                continue  # a package importing its own submodules
            if state.get(child) == 1:
                loop = path[path.index(child):] + [child] if child in path else [*path, child]
                raise AssertionError("import loop: " + " -> ".join(loop))
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_modules_stay_small(path: Path) -> None:
    """Each module of the core has one job, and fits in about 450 lines."""
    assert len(path.read_text().splitlines()) <= 450


@pytest.mark.parametrize("library", ["click", "rich"])
def test_only_the_interface_imports_click_and_rich(library: str) -> None:
    """click belongs to the command line, rich to what people see; the core stays usable from a notebook or a script."""
    allowed = {"click": {"cli"}, "rich": {"ui", "progress"}}[library]
    for path in CORE:
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top in allowed:
            continue
        found = [line for module, line in _imports(path) if module == library or module.startswith(library + ".")]
        assert not found, f"{path.relative_to(PACKAGE)} imports {library} (line {found[0]})"


def test_the_core_never_prints() -> None:
    """Outside the interface modules nothing calls print() or writes to sys.stdout / sys.stderr."""
    for path in CORE:
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top in INTERFACE or path.name == "selftest.py":  # selftest reports through a callback, but runs the CLI as a child
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{node.lineno} calls print()")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and ast.unparse(node.value) == "sys":
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{node.lineno} uses sys.{node.attr}")


def test_the_readme_lists_every_exit_code() -> None:
    """The README's exit-code table is the one ExitCode defines, row for row."""
    section = README.read_text().split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)
    assert rows == [(str(int(code)), code.meaning) for code in ExitCode]
