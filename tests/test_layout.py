"""The shape the code keeps: sources -> prediction -> outputs, small modules, no import running upward or round.

A reader should see the data flow from the file names; these checks keep it true as the code grows.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "klpd"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200

# Lowest first. A module may import its own group and any group of a lower layer, nothing else.
LAYERS: tuple[frozenset[str], ...] = (
    # the base every layer shares: paths, errors, the model, the kernel's grammar, versions and messages
    frozenset(
        {
            "klpd",
            "klpd.errors",
            "klpd.numbers",
            "klpd.root",
            "klpd.regular_file",
            "klpd.decompress",
            "klpd.model",
            "klpd.model_loader",
            "klpd.model_description",
            "klpd.model_installed",
            "klpd.names",
            "klpd.protocol",
            "klpd.kernel_version",
            "klpd.kernel_messages",
        }
    ),
    frozenset({"klpd.elf", "klpd.sources"}),  # readers of files and kernel interfaces
    frozenset({"klpd.predict"}),  # the pure prediction
    # gathering; rendering
    frozenset(
        {"klpd.collect", "klpd.installed", "klpd.transition_tasks", "klpd.outputs", "klpd.config", "klpd.api_client"}
    ),
    frozenset({"klpd.capture"}),  # a copy of what the gathering reads
    frozenset({"klpd.cli", "klpd.daemon"}),  # the programs
)
_SUBPACKAGES = {"elf", "sources", "predict", "outputs", "daemon", "cli"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _group(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (parts[1] in _SUBPACKAGES or len(parts) == 2) else "klpd"


def _layer(group: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def _imports(path: Path) -> set[str]:
    """klpd modules a file imports, anywhere in it (lazy imports count), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) ==
               "TYPE_CHECKING" for child in node.body for n in ast.walk(child)}  # fmt: skip
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "klpd":
            names = [f"{node.module}.{a.name}" for a in node.names]
            # "from klpd import kernel_messages" imports a module; "from klpd.model import X" a name.
            found.update(n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists() else node.module
                         for n in names)  # fmt: skip
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "klpd")
    return found


MODULES = dict(_modules())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines, split it by responsibility"
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name}: {size} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_downward(name: str) -> None:
    group = _group(name)
    for target in sorted(_imports(MODULES[name])):
        target_group = _group(target)
        if target_group == group:
            continue
        assert _layer(target_group) < _layer(group) or (_layer(group) == 0 == _layer(target_group)), (
            f"{name} imports {target}: {target_group} is not below {group}"
        )


def test_no_import_cycles() -> None:
    graph = {name: {t for t in _imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
