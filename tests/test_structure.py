"""The package's import structure: no import cycle among tokexport's modules (function-level imports
included), no module importing another module's _private name, no path outside the repository."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from conftest import REPO

PKG = REPO / "tokexport"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _edges() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    dep = full if full in mods else target
                    if dep in mods and dep != mod:
                        edges[mod].add(dep)
                        if alias.name.startswith("_") and not alias.name.startswith("__") and full not in mods:
                            private.append(f"{mod} imports {alias.name} from {dep}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != mod:
                        edges[mod].add(alias.name)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    # a package importing its own submodules (registration) is not a cycle of layers
                    if len(comp) > 1 and not all(c == min(comp) or c.startswith(min(comp) + ".") for c in comp):
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _cycles({"p": {"p.x"}, "p.x": {"p"}}) == []


def test_no_import_cycles():
    edges, _ = _edges()
    assert len(edges) > 30
    assert _cycles(edges) == []


def test_no_private_names_across_modules():
    _, private = _edges()
    assert private == []


def test_no_paths_outside_the_repository():
    res = subprocess.run(["grep", "-rn", "shared/", "tokexport", "README.md", "docs", "scripts"], cwd=REPO,
                         capture_output=True, text=True)
    # grep exits 1 when nothing matched; 0 is a match, 2 an error (a missing path: nothing was searched)
    assert res.returncode == 1 and res.stdout == "" and res.stderr == "", (res.returncode, res.stdout, res.stderr)
