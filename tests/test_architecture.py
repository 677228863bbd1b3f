"""The boundaries between the packages, read from the source: every import statement, lazy ones too.

    pipeline/   stage one; imports neither training nor swapper
    training/   the trainer and what it trains; never imports the swapper
    swapper/    uses a trained generator: imports only training.models and training.artifact from training

and no two modules import each other, however long the way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "training", "swapper")
SWAPPER_MAY_USE = ("training.models", "training.artifact")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _runtime_nodes(node: ast.AST):
    """Every node that can run: what sits under `if TYPE_CHECKING:` is for the type checker only."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            yield from (n for orelse in child.orelse for n in (orelse, *_runtime_nodes(orelse)))
            continue
        yield child
        yield from _runtime_nodes(child)


def imports_of(name: str) -> set[str]:
    """The project modules `name` imports, resolved to modules (`from a import b` is `a.b` when b is one)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                       for a in node.names]  # fmt: skip
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_import_names_a_module_that_exists():
    missing = sorted((a, b) for a, deps in GRAPH.items() for b in deps if b not in MODULES)
    assert not missing, missing


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("pipeline", ("pipeline",)),
        ("training", ("pipeline", "training")),
        ("swapper", ("pipeline", "swapper", *SWAPPER_MAY_USE)),
    ],
)
def test_no_package_reaches_past_its_boundary(package, allowed):
    wrong = sorted(
        (a, b)
        for a, deps in GRAPH.items()
        if a.split(".")[0] == package
        for b in deps
        if not any(b == ok or b.startswith(ok + ".") for ok in allowed)
    )
    assert not wrong, f"{package} imports past its boundary: {wrong}"


def test_the_swapper_never_loads_the_losses_or_the_loop():
    """Not even indirectly: everything the swapper imports, followed to the end, stays out of them."""
    seen, todo = set(), [m for m in MODULES if m.startswith("swapper")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH.get(m, ())
    banned = ("training.losses", "training.train", "training.config", "training.data", "training.checkpoint")
    assert not sorted(m for m in seen if m in banned)


def test_there_is_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(GRAPH.get(m, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)
