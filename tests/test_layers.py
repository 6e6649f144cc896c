"""The import graph of ``src/ddpm``: no cycles, no private names across modules, and imports that only point down.

Every import counts, wherever it stands (module top, inside a function, under ``TYPE_CHECKING``), because an import
inside a function that closes a loop is still a loop. The layers are the ones the package's docstring lists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ddpm

SRC = Path(ddpm.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every ``import ddpm...`` / ``from ddpm... import name`` anywhere in the file."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "ddpm"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "ddpm":
                found += [(base, alias.name) for alias in node.names]
    return found


def edges() -> dict[str, set[str]]:
    """module -> the ddpm modules it imports (``from ddpm import samplers`` is an import of ``ddpm.samplers``)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, imported in imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
            if target != name:
                graph[name].add(target)
    return graph


def layers() -> list[list[str]]:
    """The layers of ``ddpm.__doc__``, bottom first: the first indented block after "Layers, bottom up"."""
    lines = ddpm.__doc__.split("Layers, bottom up", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        rows.append([f"ddpm.{name.strip()}" if name.strip() != "ddpm" else "ddpm"
                     for name in line.split("#")[0].split(",") if name.strip()])
    return rows


def layer_of(module: str, table: list[list[str]]) -> int | None:
    """The layer of the most specific entry naming ``module`` or a package above it (``ddpm`` itself: exactly)."""
    matches = [(len(entry), i) for i, row in enumerate(table) for entry in row
               if module == entry or (entry != "ddpm" and module.startswith(entry + "."))]
    return max(matches)[1] if matches else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_every_import():
    """The checks below would pass vacuously on an empty graph: pin a few edges, one of them inside a function."""
    graph = edges()
    assert "ddpm.schedules" in graph["ddpm.diffusion"]
    assert "ddpm.schedules" in graph["ddpm.config"]
    assert "ddpm.samplers" in graph["ddpm.diffusion"]
    assert "ddpm.model_io" in graph["ddpm.commands.sample"]  # imported inside run()
    assert "ddpm.commands.options" in graph["ddpm.cli"]


def test_layer_of_takes_the_most_specific_entry():
    table = [["ddpm.errors"], ["ddpm"], ["ddpm.commands"]]
    assert [layer_of(m, table) for m in ("ddpm.errors", "ddpm", "ddpm.commands.sample", "ddpm.train")] == [0, 1, 2,
                                                                                                           None]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(edges())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    private = [f"{name} imports {module}.{imported}" for name, path in MODULES.items()
               for module, imported in imports(path)
               if imported and imported.startswith("_") and not imported.startswith("__") and module != name]
    assert not private


def test_every_module_sits_in_a_layer_and_imports_only_its_own_layer_or_below():
    table = layers()
    assert len(table) >= 5, table
    unplaced = sorted(name for name in MODULES if layer_of(name, table) is None)
    assert not unplaced, f"add these modules to a layer in ddpm/__init__.py's docstring: {unplaced}"
    upward = [f"{name} (layer {layer_of(name, table)}) imports {target} (layer {layer_of(target, table)})"
              for name, targets in edges().items() for target in targets
              if layer_of(target, table) > layer_of(name, table)]
    assert not upward


def test_every_module_opens_with_a_docstring_that_says_its_job():
    missing = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing
