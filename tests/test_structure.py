"""The package's import structure: no import cycle among tokexport's modules (function-level imports
included), no module importing another module's _private name, no path outside the repository; and its
size: no module over 600 lines, no function over 80."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
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
    res = subprocess.run(
        ["grep", "-rn", "shared/", "tokexport", "README.md", "docs", "scripts"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    # grep exits 1 when nothing matched; 0 is a match, 2 an error (a missing path: nothing was searched)
    assert res.returncode == 1 and res.stdout == "" and res.stderr == "", (res.returncode, res.stdout, res.stderr)


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80  # end_lineno - lineno + 1 of each def: methods and nested functions count on their own


def check_module_lengths(root: Path, limit: int = MAX_MODULE_LINES) -> None:
    """AssertionError naming every module under ``root`` longer than ``limit`` lines."""
    too_long = []
    for p in sorted(root.rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > limit:
            too_long.append(f"{p.relative_to(root.parent)}: {n} lines")
    assert not too_long, f"modules over {limit} lines (split each along its seams): {'; '.join(too_long)}"


def check_function_lengths(root: Path, limit: int = MAX_FUNCTION_LINES) -> None:
    """AssertionError naming every function under ``root`` longer than ``limit`` lines."""
    too_long = []
    for p in sorted(root.rglob("*.py")):
        defs = [
            node
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for node in sorted(defs, key=lambda d: d.lineno):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                too_long.append(f"{p.relative_to(root.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, f"functions over {limit} lines (split each into its steps): {'; '.join(too_long)}"


def test_no_module_over_600_lines():
    check_module_lengths(PKG)


def test_no_function_over_80_lines():
    check_function_lengths(PKG)


def test_the_module_length_check_names_a_long_module(tmp_path):
    """The check passes a module of exactly 600 lines and fails naming one of 601 (in a subpackage)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "at_limit.py").write_text("x = 1\n" * 600)
    check_module_lengths(pkg)
    (pkg / "sub" / "over.py").write_text("x = 1\n" * 601)
    with pytest.raises(AssertionError) as failed:
        check_module_lengths(pkg)
    first = str(failed.value).splitlines()[0]  # the message (pytest appends the failed expression)
    assert first == "modules over 600 lines (split each along its seams): pkg/sub/over.py: 601 lines", first


def _function(name: str, lines: int) -> str:
    """A function of exactly ``lines`` lines: its def and ``lines - 1`` statements."""
    return f"def {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 1))


def test_the_function_length_check_names_a_long_function_method_and_nested_function(tmp_path):
    """The check passes a function of exactly 80 lines and fails naming each one of 81: a function, a method,
    a nested function (and the function holding it)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "fits.py").write_text(_function("at_limit", 80))
    check_function_lengths(pkg)
    nested = "def outer():\n" + textwrap.indent(_function("inner", 81), "    ") + "    return inner\n"
    method = "class C:\n" + textwrap.indent(_function("method", 81).replace("():", "(self):"), "    ")
    (pkg / "long.py").write_text("\n\n".join([_function("too_long", 81), method, nested]))
    with pytest.raises(AssertionError) as failed:
        check_function_lengths(pkg)
    first = str(failed.value).splitlines()[0]  # the message (pytest appends the failed expression)
    assert first.startswith("functions over 80 lines (split each into its steps): "), first
    named = first.split(": ", 1)[1].split("; ")
    assert named == [
        "pkg/long.py:1 too_long: 81 lines",
        "pkg/long.py:85 method: 81 lines",
        "pkg/long.py:168 outer: 83 lines",
        "pkg/long.py:169 inner: 81 lines",
    ], named


CLI_MODULES = {
    "tokexport.__main__",
    "tokexport.cli",
    "tokexport.cli.app",
    "tokexport.cli.ci",
    "tokexport.cli.target",
    "tokexport.cli.ui",
}
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
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            )
            ui += [f"{mod} imports {n}" for n in names if n.split(".")[0] in UI_PACKAGES]
    assert ui == []
    code = (
        "import sys, tokexport, tokexport.pipeline, tokexport.report, tokexport.tasks.run, tokexport.tasks.registered, tokexport.shipped\n"
        "assert tokexport.shipped.find_shipped_recipe('dinov2-small-zero-tprune') is not None\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {UI_PACKAGES!r} or m in {sorted(CLI_MODULES)!r}))"
    )
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
            f"from newpkg import REG, ORDER\nORDER.append({name!r})\n\n@REG.register\nclass T:\n    name = {name!r}\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_submodules("newpkg", last=("last_one",), skip=("infra",)) == ["alpha", "zeta", "last_one"]
    import newpkg

    assert newpkg.ORDER == ["alpha", "zeta", "last_one"] and sorted(newpkg.REG) == ["alpha", "last_one", "zeta"]
    assert isinstance(newpkg.REG, Registry)
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tokexport.reduce, tokexport.vlm\n"
            "print(sorted(m for m in sys.modules if m.startswith(('tokexport.reduce.', 'tokexport.vlm.'))))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    import tokexport.reduce
    import tokexport.vlm

    skipped = {f"tokexport.reduce.{n}" for n in tokexport.reduce.INFRASTRUCTURE} | {
        f"tokexport.vlm.{n}" for n in tokexport.vlm.INFRASTRUCTURE
    }
    on_disk = sorted(
        f"tokexport.{p.parent.name}.{p.stem}"
        for d in ("reduce", "vlm")
        for p in (PKG / d).glob("*.py")
        if not p.stem.startswith("_") and f"tokexport.{p.parent.name}.{p.stem}" not in skipped
    )
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
    res = subprocess.run(
        [sys.executable, "-I", str(path), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=path.parent.parent.parent.parent,
    )  # -I: no tokexport on the path, as on the device
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stdout + res.stderr


# ------------------------------------------------------------------ who names a task, who names a method

# string constants equal to a registered name that are not that name's use, each with why
NAME_ALLOWED = {
    # the recipe union: the `task:` tag chooses the recipe kind before any task is imported
    ("task", "recipe.py"): "the recipe union",
    ("task", "vocab/recipe.py"): "the recipe union",
    # Hugging Face / Optimum task names that choose the model class to load (the loader's own vocabulary)
    ("task", "load.py"): "Optimum task names choosing the model class",
    # the report contract: the `kind` values a report may carry, read by `check` without importing a task
    ("task", "stages/report_schema.py"): "the report contract's kinds",
    ("method", "reduce/__init__.py"): "'hybrid' imported last, so its steps may be any method",
    ("method", "reduce/baselines_vit.py"): "the honest baselines' names (random, uniform)",
    ("method", "vlm/baselines.py"): "the honest baselines' names (random, uniform)",
    ("method", "reduce/zero_tprune.py"): "init: 'uniform' (a PageRank start, not the method)",
}


def stray_names(root: Path, owners: dict[str, set[Path]], tasks: set[str]) -> list[str]:
    """String constants under ``root`` equal to a method name outside the module(s) that register it, or to a
    task name outside ``tasks/``, less ``NAME_ALLOWED``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if (
                node.value in owners
                and path.resolve() not in owners[node.value]
                and ("method", rel) not in NAME_ALLOWED
            ):
                out.append(f"{rel}:{node.lineno}: method {node.value!r}")
            if node.value in tasks and not rel.startswith("tasks/") and ("task", rel) not in NAME_ALLOWED:
                out.append(f"{rel}:{node.lineno}: task {node.value!r}")
    return out


def _registered_names() -> tuple[dict[str, set[Path]], set[str]]:
    import inspect

    import tokexport.tasks.registered  # noqa: F401  (registers every task)
    from tokexport.reduce import method_classes
    from tokexport.tasks.base import TASKS
    from tokexport.vlm.select import VISUAL_METHODS

    owners: dict[str, set[Path]] = {}
    for name, cls in [*method_classes().items(), *VISUAL_METHODS.items()]:
        owners.setdefault(name, set()).add(Path(inspect.getsourcefile(cls)).resolve())
    tasks = {t for cls in TASKS.values() for t in (cls.kind, *cls.recipe_tasks)} - {"auto"}
    return owners, tasks


def test_no_task_or_method_name_outside_its_owner():
    owners, tasks = _registered_names()
    assert {"zero-tprune", "tome", "hired", "visionzip"} <= set(owners) and {"vocab-trim", "visual-tokens"} <= tasks
    assert stray_names(REPO / "tokexport", owners, tasks) == []


def test_a_stray_name_is_found(tmp_path):
    owners, tasks = _registered_names()
    (tmp_path / "sweep.py").write_text('if method == "tome" or task == "vocab-trim":\n    pass\n')
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "x.py").write_text('KIND = "vocab-trim"\n')  # a task's own module may name it
    assert stray_names(tmp_path, owners, tasks) == ["sweep.py:1: method 'tome'", "sweep.py:1: task 'vocab-trim'"]
