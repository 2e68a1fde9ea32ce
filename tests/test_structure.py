"""The package's import structure: no import cycle among tokexport's modules (function-level imports
included), no module importing another module's _private name, no path outside the repository."""
from __future__ import annotations

import ast
import subprocess
import sys
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
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # type-only imports count too
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


CLI_MODULES = {"tokexport.__main__", "tokexport.cli", "tokexport.cli.app", "tokexport.cli.ci", "tokexport.cli.target",
               "tokexport.cli.ui"}
UI_PACKAGES = ("typer", "rich", "click")


def test_the_library_never_imports_the_cli():
    """No library module imports a command module or a terminal-UI package (function-level imports
    included), and `import tokexport` plus the modules `tokexport.convert` runs through load neither."""
    edges, _ = _edges()
    up = sorted(f"{m} imports {d}" for m, ds in edges.items() if m not in CLI_MODULES for d in ds if d in CLI_MODULES)
    assert up == []
    ui = []
    for mod, path in _modules().items():
        if mod in CLI_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            ui += [f"{mod} imports {n}" for n in names if n.split(".")[0] in UI_PACKAGES]
    assert ui == []
    code = ("import sys, tokexport, tokexport.pipeline, tokexport.report, tokexport.tasks.run, tokexport.tasks.registered, tokexport.shipped\n"
            "assert tokexport.shipped.find_shipped_recipe('dinov2-small-zero-tprune') is not None\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {UI_PACKAGES!r} or m in {sorted(CLI_MODULES)!r}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "[]", (res.stdout, res.stderr[-2000:])


def test_one_registration_form():
    """Everything looked up by name registers through `Registry.register` (a decorator reading the class's
    key): no other function registers, no module writes into a registry by hand."""
    registries = {"METHODS", "COMPOSITES", "VISUAL_METHODS", "ADAPTERS", "TASKS"}
    found = []
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("register_"):
                found.append(f"{mod}: def {node.name}")
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in registries:
                        found.append(f"{mod}:{node.lineno}: {t.value.id}[...] = ")
    assert found == []


def test_the_registry_refuses_duplicates_across_shared_names_and_lists_the_known():
    import pytest

    from tokexport.registry import Registry

    steps, schedules = Registry("step"), None
    schedules = Registry("schedule", disjoint=(steps,))

    @steps.register
    class A:
        name = "a"

    with pytest.raises(RuntimeError, match="'a' registered twice"):
        @schedules.register
        class B:
            name = "a"

    @schedules.register
    class C:
        name = "c"

    with pytest.raises(RuntimeError, match="'c' registered twice"):
        @steps.register
        class D:
            name = "c"

    with pytest.raises(RuntimeError, match="class attribute 'name'"):
        steps.register(type("E", (), {}))
    assert steps.register(A) is A and dict(steps) == {"a": A}  # the same class again is no duplicate
    with pytest.raises(KeyError, match="known: a"):
        steps["zz"]


def test_a_new_method_module_registers_by_being_there(tmp_path, monkeypatch):
    """The method packages import every module they hold (no list to extend), the named ones last."""
    from tokexport.registry import Registry, import_submodules

    pkg = tmp_path / "newpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from tokexport.registry import Registry\nREG = Registry('thing')\nORDER = []\n")
    for name in ("zeta", "alpha", "last_one", "_private", "infra"):
        (pkg / f"{name}.py").write_text(
            f"from newpkg import REG, ORDER\nORDER.append({name!r})\n\n@REG.register\nclass T:\n    name = {name!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_submodules("newpkg", last=("last_one",), skip=("infra",)) == ["alpha", "zeta", "last_one"]
    import newpkg

    assert newpkg.ORDER == ["alpha", "zeta", "last_one"] and sorted(newpkg.REG) == ["alpha", "last_one", "zeta"]
    assert isinstance(newpkg.REG, Registry)
    res = subprocess.run([sys.executable, "-c", "import sys, tokexport.reduce, tokexport.vlm\n"
                          "print(sorted(m for m in sys.modules if m.startswith(('tokexport.reduce.', 'tokexport.vlm.'))))"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    import tokexport.reduce
    import tokexport.vlm

    skipped = {f"tokexport.reduce.{n}" for n in tokexport.reduce.INFRASTRUCTURE} | {
        f"tokexport.vlm.{n}" for n in tokexport.vlm.INFRASTRUCTURE}
    on_disk = sorted(f"tokexport.{p.parent.name}.{p.stem}" for d in ("reduce", "vlm")
                     for p in (PKG / d).glob("*.py") if not p.stem.startswith("_")
                     and f"tokexport.{p.parent.name}.{p.stem}" not in skipped)
    assert set(on_disk) <= set(eval(res.stdout)), res.stdout  # every module of both packages was imported


def test_the_device_script_needs_only_numpy_and_a_runtime():
    """tokexport/device/verify_on_device.py runs where tokexport is not installed: it imports the standard
    library, numpy, and (inside functions) the runtimes it finds; never tokexport."""
    path = PKG / "device" / "verify_on_device.py"
    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "tensorrt", "polygraphy", "onnx"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"relative import in {path.name}"
            found.add((node.module or "").split(".")[0])
    assert found - allowed == set(), found - allowed
    res = subprocess.run([sys.executable, "-I", str(path), "--help"], capture_output=True, text=True, check=False,
                         cwd=path.parent.parent.parent.parent)  # -I: no tokexport on the path, as on the device
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stdout + res.stderr
