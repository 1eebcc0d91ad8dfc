"""The sentiment job's import graph by wing: which wing imports which, its layers (lowest first) and its cycles.

python benchmarks/wing_graph.py             # this checkout
python benchmarks/wing_graph.py --root DIR  # another checkout, e.g. an older commit's

Every import counts, at a module's top or inside a function (a lazy import is still a dependency). The shared
core's files are nodes of their own (``core/config``...), so a leaf such as config.py shows as one.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

JOB = "lstm_jax.sentiment"


def node_of(module: str, wings: set[str]) -> str | None:
    """The wing of a job module (``data``, ``model``...), ``core/<file>`` for the shared core, None outside."""
    if not module.startswith(JOB + "."):
        return None
    first = module[len(JOB) + 1 :].split(".")[0]
    return first if first in wings else f"core/{first}"


def imports_of(path: Path) -> set[str]:
    """Every ``lstm_jax.sentiment`` name ``path`` imports, anywhere in it: ``pkg.module`` for ``from pkg import
    module`` and ``pkg.function`` for ``from pkg import function`` (the caller finds the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:  # the job imports absolutely
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith(JOB + ".")}


def wing_graph(root: Path) -> dict[str, set[str]]:
    """Wing -> the other wings (and core files) it imports."""
    folder = root / "lstm_jax" / "sentiment"
    wings = {path.parent.name for path in folder.glob("*/__init__.py")}
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in folder.rglob("*.py")}  # fmt: skip
    graph = defaultdict(set)
    for module, path in modules.items():
        source = node_of(module, wings)
        if source is None:
            continue
        graph[source]
        for name in imports_of(path):
            while name not in modules and "." in name:  # "from pkg.module import function" -> pkg.module
                name = name.rsplit(".", 1)[0]
            target = node_of(name, wings)
            if target and target != source:
                graph[source].add(target)
    return dict(graph)


def layers(graph: dict[str, set[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """(layers, lowest first: each node sits one above the highest it imports; cycles: groups that import each
    other, which get no layer)."""
    levels: dict[str, int] = {}
    remaining = set(graph)
    while remaining:
        ready = [node for node in remaining if graph[node] <= set(levels)]
        if not ready:
            break
        for node in ready:
            levels[node] = 1 + max((levels[target] for target in graph[node]), default=-1)
        remaining -= set(ready)
    cyclic = [sorted(group) for group in _strongly_connected(graph) if len(group) > 1]
    by_level = defaultdict(list)
    for node, level in levels.items():
        by_level[level].append(node)
    return [sorted(by_level[level]) for level in sorted(by_level)], cyclic


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    reach = {node: _reachable(graph, node) for node in graph}
    groups, seen = [], set()
    for node in graph:
        if node not in seen:
            group = {other for other in graph if other in reach[node] and node in reach[other]} | {node}
            seen |= group
            groups.append(group)
    return groups


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    found, stack = set(), list(graph.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(graph.get(node, ()))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    graph = wing_graph(Path(parser.parse_args(argv).root))
    for node in sorted(graph):
        print(f"{node:22s} -> {', '.join(sorted(graph[node])) or '(nothing)'}")
    ordered, cyclic = layers(graph)
    for level, nodes in enumerate(ordered):
        print(f"layer {level}: {', '.join(nodes)}")
    print(f"{len(ordered)} layers; cycles: {'; '.join(' <-> '.join(group) for group in cyclic) or 'none'}")


if __name__ == "__main__":
    main()
