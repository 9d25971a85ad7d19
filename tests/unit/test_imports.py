"""No import cycles in aggregator/ and simulator/, read from the source: every import counts,
at module level, inside a function or under TYPE_CHECKING (a cycle hidden in a function is still
a cycle between the two modules' jobs)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aggregator", "simulator")

# Cycles known and left to another change, each as its modules in order; the test fails once one
# is gone, so that its line goes too.
ALLOWED: set[tuple[str, ...]] = set()

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """The modules of `modules` that the module `name` imports anywhere in `tree`."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` of a module not ours (or a name in one): the longest known prefix.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> Graph:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules = set(files)
    return {name: set(imported(ast.parse(path.read_text(encoding="utf-8")), name,
                               path.name == "__init__.py", modules))
            for name, path in files.items()}


def cycles(graph: Graph) -> list[tuple[str, ...]]:
    """The elementary cycle through each strongly connected component's members, found by a
    depth-first search from each module (rotated to start at its smallest name)."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in seen and nxt > start:  # each cycle once, from its smallest module
                seen.add(nxt)
                walk(start, nxt, [*path, nxt], seen)
                seen.discard(nxt)

    for start in sorted(graph):
        walk(start, start, [start], {start})
    return sorted(found)


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "aggregator.config" in graph["aggregator.app"]  # module level
    assert "aggregator.app" in graph["aggregator.cli"]  # inside a function
    assert "simulator.load.run" in graph["simulator.load"]  # a package's own modules
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    new = [c for c in found if c not in ALLOWED]
    assert not new, "import cycles:\n" + "\n".join(" -> ".join((*c, c[0])) for c in new)
    gone = ALLOWED - set(found)
    assert not gone, f"no longer cycles, remove them from ALLOWED: {sorted(gone)}"
