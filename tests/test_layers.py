"""The layers hold: the scheduling core imports no I/O, and no module imports in a circle.

Both read the source with :mod:`ast` (nothing is imported), and count every import
statement wherever it stands: in a function, or under ``if TYPE_CHECKING``, which
hides a cycle from the interpreter but not from a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "poller"

# What the pure core (poller/sched/) may import from the rest of the package: the plain
# data it reads and emits. ``poller.events`` is allowed (the lead's decision): it holds
# the plain records the core emits (Transition, TrackingFailure, HealthStats), as h11's
# state machine emits its Event classes.
SCHED_MAY_IMPORT = frozenset({"poller.errors", "poller.models", "poller.events"})
# Nor may it touch time or I/O: the driver gives it ``now``.
SCHED_MUST_NOT_IMPORT = frozenset({"asyncio", "anyio", "aiohttp", "time"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports, absolute; ``from package import submodule`` names
    the submodule."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in MODULES else base


def own_imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports."""
    return {other for other in imports(name) if other in MODULES and other != name}


SCHED = sorted(name for name in MODULES if name.startswith("poller.sched"))


def test_the_core_is_a_package_of_its_own() -> None:
    assert "poller.sched.core" in SCHED
    assert "poller.sched.queue" in SCHED


@pytest.mark.parametrize("name", SCHED)
def test_the_core_imports_no_io_and_nothing_above_it(name: str) -> None:
    found = set(imports(name))
    forbidden = {i for i in found if i.split(".")[0] in SCHED_MUST_NOT_IMPORT}
    above = {
        i
        for i in found
        if i.split(".")[0] == "poller"
        and not i.startswith("poller.sched")
        and i not in SCHED_MAY_IMPORT
    }
    assert forbidden == set(), f"{name} imports I/O or time"
    assert above == set(), f"{name} reaches out of the core"


def test_the_layers_are_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"sched", "commands", "daemon", "testing"} <= folders


def test_nothing_below_the_commands_imports_them() -> None:
    users = {
        name: found
        for name in MODULES
        if not name.startswith("poller.commands") and name != "poller.__main__"
        for found in [{i for i in own_imports(name) if i.startswith("poller.commands")}]
        if found
    }
    assert users == {}


def test_the_simulator_imports_nothing_of_the_engine() -> None:
    users = {
        name: found
        for name in MODULES
        if name.startswith("poller.testing")
        for found in [{i for i in own_imports(name) if not i.startswith("poller.testing")}]
        if found
    }
    assert users == {}


def test_the_engine_talks_to_the_transport_seam_only() -> None:
    """The driver fetches through what the engine hands it, and knows no transport."""
    assert {i for i in own_imports("poller._driver") if i == "poller.transport"} == set()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return [*path[path.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = {name: own_imports(name) for name in MODULES}
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
