"""The package's import graph from its own source: levels, circles and arrows back up, and the
folder rule (README, "Architecture").

    python scripts/import_graph.py            # summary: modules, arrows, levels, circles, arrows back up
    python scripts/import_graph.py --levels   # each level's modules, bottom first
    python scripts/import_graph.py --check    # also the folder rule; exit 1 if an import breaks it or a circle exists

Run it from the repository's root. Every `import` counts, inside functions too: a lazy import is still
an arrow. A module's level is the longest chain of imports below it (level 0 imports nothing of the
package); the floors of the folder rule are coarser: LAYERS below. Arrows back up are the edges that
close a circle (back edges of a depth-first walk in name order); levels are computed without them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "actexp"
# The checkout in which it runs (run it from the repository's root), else the one that holds it.
ROOT = Path.cwd() / PACKAGE if (Path.cwd() / PACKAGE / "__init__.py").is_file() else Path(__file__).resolve().parents[1] / PACKAGE

# The folder rule, bottom first: a module may import its own folder and the folders on earlier
# lines (a line's folders do not import each other). Top-level modules are named by file.
LAYERS = [
    ["errors", "memory", "progress", "version"],
    ["maths", "config"],
    ["store"],
    ["models"],
    ["data", "report"],
    ["backends"],
    ["jobs"],
    ["api", "run"],
    ["__init__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Package modules that `path` imports: `from x import y` names module x.y if it is one, else x
    (a name that x defines: x's __init__.py for a package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, name, modules) for name, path in sorted(paths.items())}


def back_edges(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    state: dict[str, int] = {}  # 1 on the walk's stack, 2 done
    back = []

    def walk(node: str) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                back.append((node, target))
            elif target not in state:
                walk(target)
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    return back


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def levels(edges: dict[str, set[str]], back: list[tuple[str, str]]) -> dict[str, int]:
    forward = {n: {t for t in ts if (n, t) not in back} for n, ts in edges.items()}
    level: dict[str, int] = {}

    def height(node: str) -> int:
        if node not in level:
            level[node] = 1 + max((height(t) for t in forward[node]), default=-1)
        return level[node]

    for node in edges:
        height(node)
    return level


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rule_breaks(edges: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, line in enumerate(LAYERS) for name in line}
    breaks = []
    for source, targets in edges.items():
        for target in sorted(targets):
            a, b = folder(source), folder(target)
            if a not in rank or b not in rank:
                breaks.append(f"{source} -> {target}: {a if a not in rank else b} is on no floor of LAYERS")
            elif a != b and rank[b] >= rank[a]:
                breaks.append(f"{source} -> {target}: {a}/ may not import {b}/")
    return breaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", action="store_true", help="list each level's modules")
    parser.add_argument("--check", action="store_true", help="check the folder rule too; exit 1 if broken")
    args = parser.parse_args()

    edges = graph()
    back = back_edges(edges)
    rings = circles(edges)
    level = levels(edges, back)
    print(f"modules {len(edges)}, arrows {sum(map(len, edges.values()))}, levels {max(level.values()) + 1}, "
          f"circles {len(rings)}, arrows back up {len(back)}")
    for ring in rings:
        print("circle: " + " ".join(m.removeprefix(PACKAGE + ".") for m in ring))
    for source, target in back:
        print(f"back up: {source} -> {target}")
    if args.levels:
        for n in range(max(level.values()) + 1):
            names = sorted(m.removeprefix(PACKAGE + ".") for m, f in level.items() if f == n)
            print(f"level {n}: " + " ".join(names))
    if args.check:
        breaks = rule_breaks(edges)
        for line in breaks:
            print("rule: " + line)
        print(f"folder rule: {len(breaks)} imports break it")
        return 1 if breaks or rings else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
