"""Where the conversions of a sweep and the candidates of a search run: locally or on a Ray cluster.

``local``: in this process (``--jobs 1``) or in ``--jobs N`` spawned worker processes (a crashed worker
breaks the pool: its points are re-run one per fresh process, so only the point that crashes is recorded
as crashed). ``ray``: each conversion is one Ray task with its own CPU reservation (``--cpus-per-job``,
also the task's torch and bench thread count) on a cluster (``--address``, ``RAY_ADDRESS``) or on a Ray
instance started on this machine for the run. Ray is optional (``pip install 'tokexport[ray]'``).

Results land only in the output directory, atomically per point: a task on the driver's node runs the
one driver (:func:`tokexport.tasks.run.run`) straight into its run directory (staged and renamed into
place); a task on another node converts into a scratch directory of its own and ships the finished
directory back as a tar archive, which the driver unpacks into a staging sibling and renames into place.
A point that fails (an error, a missing checkpoint on the worker, a crashed worker) is returned as a
record with the error and an exit code; the others go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EnvironmentProblem, InputError, TokexportError, option

BACKENDS = ("local", "ray")
CRASH_EXIT = 1  # a worker that died without an exit status of its own (killed, segfault, out of memory)
RAY_INSTALL = "pip install 'tokexport[ray]'"


def one_line(text: str) -> str:
    lines = [x.strip() for x in str(text).strip().splitlines() if x.strip()]
    return lines[0] if lines else ""


def require_ray():
    """The ``ray`` module, or EnvironmentProblem (exit 5): one line with the install command."""
    try:
        import ray
    except ImportError:
        raise EnvironmentProblem(
            f"{_backend('ray')}: Ray is not installed; install it with `{RAY_INSTALL}` "
            f"(or run with {_backend('local')})"
        ) from None
    return ray


def _backend(name: str) -> str:
    """``backend='ray'`` in the library's message, ``--backend ray`` where the CLI prints it."""
    return option("backend", f"backend={name!r}", f"--backend {name}")


def check_backend(backend: str, jobs: int, cpus_per_job: int | None) -> None:
    """Command-line checks of the fan-out options (before anything is read or written)."""
    if backend not in BACKENDS:
        raise InputError(f"{option('backend')}: {backend!r}; give local or ray")
    if cpus_per_job is not None and cpus_per_job < 1:
        raise InputError(f"{option('cpus_per_job')}: {cpus_per_job}; give 1 or more")
    if backend == "ray":
        if jobs != 1:
            raise InputError(
                f"{option('jobs')}: only for {_backend('local')}; on Ray the cluster's CPUs ÷ "
                f"{option('cpus_per_job')} set how many conversions run at once"
            )
        require_ray()


# ------------------------------------------------------------------------------------------ the point task


@dataclass
class PointSpec:
    """One conversion: a validated recipe run by the one driver into ``run_dir`` (absolute, on the driver)."""

    key: str  # unique within the fan-out (the run directory's path relative to the output)
    recipe: object
    base_dir: str
    run_dir: str
    label: str
    threads: int | None = None  # torch threads in the task (bench threads are in the recipe)
    local_model: str | None = None  # the checkpoint's path as the driver resolved it (a local folder)
    extra: dict = field(default_factory=dict)


def check_model_here(recipe, base_dir: str, local_model: str | None) -> None:
    """A checkpoint missing on this node: one line naming the model and the fix."""
    from .zoo import BUNDLED, GENERATED, resolve_bundled

    host = socket.gethostname()
    name = recipe.model
    if name in BUNDLED or name in GENERATED:
        try:
            resolve_bundled(name)
        except InputError as e:
            raise InputError(
                f"model {name}: not available on worker {host} ({one_line(e)}); run `tokexport models "
                f"fetch {name}` on every node, or set TOKEXPORT_MODELS_DIR on every node to a shared "
                "directory that holds it"
            ) from None
        return
    p = Path(name).expanduser()
    path_like = p.is_absolute() or name.startswith((".", "~")) or local_model is not None
    if path_like:
        p = p if p.is_absolute() else Path(base_dir) / p
        if not p.exists():
            raise InputError(
                f"model {name}: checkpoint {p} not found on worker {host}; copy it to the same path on "
                "every node, or keep checkpoints in a shared directory every node mounts at the same "
                "path"
            )


_LOADED: dict = {}


def _convert(recipe, base_dir: str, out_dir: str, label: str, torch_threads: int | None) -> int:
    """Run one conversion (in a worker or in-process) into ``out_dir``; its exit code. Where the recipe's
    sweep axis gives a cache key (ViT: what the loader depends on), the loaded model is kept per process."""
    import torch

    from .tasks.axes import axis_for
    from .tasks.run import run

    if torch_threads:
        torch.set_num_threads(torch_threads)
    kwargs = {}
    axis = axis_for(recipe)
    key = axis.model_cache_key(recipe, base_dir)
    if key is not None:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = axis.load_model(recipe, base_dir)
        kwargs["loaded"] = _LOADED[key]
    res = run(recipe, Path(base_dir), Path(out_dir), force=True, label=label, **kwargs)
    return res.exit_code


def run_point(spec: PointSpec, ship: bool = False) -> dict:
    """Convert one point; never raises. Returns its record: ``status`` done (the driver produced a report,
    whatever its verdict: ``exit_code`` 0, 3, 4 ...) or failed (``error``: one line, ``exit_code``: the
    error's). ``ship``: convert into a scratch directory and return it as ``archive`` (tar bytes)."""
    t0 = time.time()
    rec: dict = {"key": spec.key, "host": socket.gethostname()}
    scratch = None
    try:
        check_model_here(spec.recipe, spec.base_dir, spec.local_model)
        target = spec.run_dir
        if ship:
            scratch = tempfile.mkdtemp(prefix="tokexport-point-")
            target = os.path.join(scratch, "run")
        code = _convert(spec.recipe, spec.base_dir, target, spec.label, spec.threads)
        rec.update(status="done", exit_code=code)
        if ship:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(target, arcname=".")
            rec["archive"] = buf.getvalue()
    except TokexportError as e:
        rec.update(status="failed", exit_code=e.exit_code, error=one_line(e) or type(e).__name__)
    except Exception as e:  # noqa: BLE001  (a failing point is recorded; the others go on)
        rec.update(status="failed", exit_code=CRASH_EXIT, error=f"{type(e).__name__}: {one_line(e)}".rstrip(": "))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    rec["seconds"] = round(time.time() - t0, 3)
    return rec


def _ray_point(spec: PointSpec, driver_node: str) -> dict:
    """The Ray task: write straight into the output on the driver's node, else ship the directory back."""
    import ray

    return run_point(spec, ship=ray.get_runtime_context().get_node_id() != driver_node)


def materialize(spec: PointSpec, rec: dict) -> dict:
    """Unpack a shipped run directory into ``spec.run_dir`` (staged, renamed into place)."""
    data = rec.pop("archive", None)
    if data is None:
        return rec
    from .outdir import claim_out_dir

    with (
        claim_out_dir(spec.run_dir, True, kind="convert") as claim,
        claim.staged() as tmp,
        tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar,
    ):
        tar.extractall(tmp, filter="data")
    rec["shipped_bytes"] = len(data)
    return rec


# --------------------------------------------------------------------------------------------- backends


def _child(conn, spec: PointSpec) -> None:
    conn.send(run_point(spec))
    conn.close()


def _isolated(spec: PointSpec) -> dict:
    """Run one point in a fresh process of its own; a crash is recorded with the process's exit status."""
    from multiprocessing import get_context

    ctx = get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, spec))
    p.start()
    send.close()
    rec = None
    with contextlib.suppress(EOFError, OSError):
        rec = recv.recv()
    p.join()
    if rec is None:
        code = p.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        rec = {
            "key": spec.key,
            "host": socket.gethostname(),
            "status": "failed",
            "crashed": True,
            "exit_code": code if code and code > 0 else CRASH_EXIT,
            "error": f"the worker process died while converting ({how})",
        }
    return rec


class Fanout:
    """Runs point conversions (and, on Ray, search evaluators) on the chosen backend. Use as a context
    manager: on Ray it connects to ``address`` (or ``RAY_ADDRESS``) or starts a local instance for the
    duration, unless Ray is already initialised in this process (then it is left running)."""

    def __init__(
        self, backend: str = "local", address: str | None = None, cpus_per_job: int | None = None, jobs: int = 1
    ):
        self.backend, self.address, self.jobs = backend, address, jobs
        self.cpus_per_job = cpus_per_job
        self._ray = None
        self._owns = False
        self.driver_node: str | None = None

    # -- session
    def __enter__(self) -> Fanout:  # noqa: PYI034
        if self.backend == "ray":
            ray = require_ray()
            if not ray.is_initialized():
                addr = self.address or os.environ.get("RAY_ADDRESS") or None
                kwargs = {"log_to_driver": False, "logging_level": "ERROR"}
                if addr is None:
                    kwargs["include_dashboard"] = False
                    # Ray runs task workers at nice 15 by default: on a shared machine a local sweep would then
                    # crawl behind everything else; here the tasks run at the priority of the command itself
                    os.environ.setdefault("RAY_worker_niceness", "0")
                try:  # "local": a new instance here, never a cluster some `ray start` left running
                    ray.init(address=addr or "local", **kwargs)
                except Exception as e:  # noqa: BLE001  (no cluster there: one line)
                    where = (
                        f"{option('address')} {addr}"
                        if self.address
                        else (f"RAY_ADDRESS={addr}" if addr else _backend("ray"))
                    )
                    raise EnvironmentProblem(
                        f"{where}: cannot start or reach Ray ({type(e).__name__}: "
                        f"{one_line(e)[:200]}); start a cluster with `ray start --head` and "
                        f"pass its address, or omit {option('address')} for a local instance"
                    ) from None
                self._owns = True
            self._ray = ray
            self.driver_node = ray.get_runtime_context().get_node_id()
        return self

    def __exit__(self, *exc) -> None:
        if self._ray is not None and self._owns:
            self._ray.shutdown()
        self._ray = None

    # -- facts
    @property
    def cpus(self) -> int:
        """CPUs per conversion: --cpus-per-job, else 1 on Ray, cores ÷ jobs locally (None: leave as is)."""
        if self.cpus_per_job is not None:
            return self.cpus_per_job
        if self.backend == "ray":
            return 1
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def threads(self) -> int | None:
        """Torch and bench threads of each conversion (None: the process default, --jobs 1 without
        --cpus-per-job)."""
        if self.backend == "local" and self.jobs == 1 and self.cpus_per_job is None:
            return None
        return self.cpus

    @property
    def parallel(self) -> int:
        """How many conversions or evaluations run at once."""
        if self.backend == "ray":
            total = int(self._ray.cluster_resources().get("CPU", 1))
            return max(1, total // self.cpus)
        return self.jobs

    def describe(self) -> dict:
        d = {"name": self.backend, "parallel": self.parallel, "cpus_per_job": self.threads()}
        if self.backend == "ray":
            d["address"] = self.address or os.environ.get("RAY_ADDRESS") or "local instance"
            d["nodes"] = sum(1 for n in self._ray.nodes() if n.get("Alive"))
        return d

    # -- conversions
    def convert(self, specs: list[PointSpec], on_done: Callable[[PointSpec, dict], None] | None = None) -> list[dict]:
        """Run every spec; returns their records in spec order. ``on_done`` is called on the driver as each
        point finishes (its run directory already in place)."""
        if not specs:
            return []
        if self.backend == "ray":
            return self._convert_ray(specs, on_done)
        records: dict[str, dict] = {}

        def done(spec, rec):
            records[spec.key] = rec
            if on_done:
                on_done(spec, rec)

        if self.jobs == 1:
            for s in specs:
                done(s, run_point(s))
        else:
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
            from concurrent.futures.process import BrokenProcessPool
            from multiprocessing import get_context

            broken = []
            with ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn")) as pool:
                futures = [(s, pool.submit(run_point, s)) for s in specs]
                for s, f in futures:
                    try:
                        done(s, f.result())
                    except BrokenProcessPool:
                        broken.append(s)
            if broken:  # a worker died: every point it took down runs again alone, so only the culprit fails
                with ThreadPoolExecutor(max_workers=self.jobs) as threads:
                    for s, rec in zip(broken, threads.map(_isolated, broken)):
                        done(s, rec)
        return [records[s.key] for s in specs]

    def _remote(self):
        ray = self._ray
        return ray.remote(_ray_point).options(num_cpus=self.cpus, max_retries=0)

    def _convert_ray(self, specs, on_done) -> list[dict]:
        ray = self._ray
        task = self._remote()
        refs = {task.remote(s, self.driver_node): s for s in specs}
        records: dict[str, dict] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                s = refs[ref]
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died, or the task could not run there
                    crashed = isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
                    rec = {
                        "key": s.key,
                        "status": "failed",
                        "exit_code": CRASH_EXIT,
                        "crashed": crashed,
                        "error": f"{type(e).__name__}: {one_line(e)}",
                    }
                try:
                    rec = materialize(s, rec)
                except (OSError, tarfile.TarError, TokexportError) as e:
                    rec = {
                        "key": s.key,
                        "status": "failed",
                        "exit_code": CRASH_EXIT,
                        "error": f"could not unpack the shipped run directory ({one_line(e)})",
                    }
                records[s.key] = rec
                if on_done:
                    on_done(s, rec)
        return [records[s.key] for s in specs]

    # -- search evaluators (Ray only): one actor per parallel slot, each with the model and original outputs
    def evaluators(self, evaluator_cls, recipe, base_dir: str, metric: str, max_drop: float):
        """``evaluate_many(keeps) -> [Evaluation]``: ViT schedules scored by :class:`tokexport.search.Evaluator`
        actors in parallel (one per slot, each loads the model once)."""
        ray = self._ray
        actor = ray.remote(_EvalActor).options(num_cpus=self.cpus, max_restarts=0)
        n = self.parallel
        actors = [actor.remote(evaluator_cls, recipe, base_dir, metric, max_drop, self.cpus) for _ in range(n)]
        self._actors = actors
        from ray.util import ActorPool

        pool = ActorPool(actors)

        def evaluate_many(keeps: list[dict]) -> list:
            try:
                return list(pool.map(lambda a, k: a.evaluate.remote(k), keeps))
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), TokexportError) else None
                if cause is not None:
                    raise cause from None
                raise EnvironmentProblem(f"search evaluator failed on Ray: {one_line(e)}") from None
            except ray.exceptions.RayError as e:
                raise EnvironmentProblem(
                    f"search evaluator failed on Ray ({type(e).__name__}: {one_line(e)})"
                ) from None

        return evaluate_many

    def close_evaluators(self) -> None:
        """Stop the evaluator actors (their CPUs go back to the cluster for the conversions)."""
        for a in getattr(self, "_actors", []):
            with contextlib.suppress(Exception):
                self._ray.kill(a)
        self._actors = []


class _EvalActor:
    """Holds a loaded model and a search Evaluator (``evaluator_cls``: tokexport.search.Evaluator, handed
    in so that this module does not import the search; original outputs computed once) on a worker."""

    def __init__(self, evaluator_cls, recipe, base_dir: str, metric: str, max_drop: float, threads: int):
        import torch

        from .load import load_model

        torch.set_num_threads(threads)
        self.ev, self.error = None, None
        try:  # raised by evaluate(), where Ray hands the error itself back to the driver
            check_model_here(recipe, base_dir, None)
            lm = load_model(
                recipe.model,
                Path(base_dir),
                recipe.family,
                recipe.task,
                recipe.export.image_size,
                allow_pickle=recipe.allow_pickle,
            )
            self.ev = evaluator_cls(recipe, lm, metric, max_drop)
        except TokexportError as e:
            self.error = e

    def evaluate(self, keep: dict):
        if self.error is not None:
            raise self.error
        return self.ev(keep)


def raise_failed(rec: dict, what: str) -> None:
    """A failed record as the error the local backend would have raised (same exit code, one line)."""
    if rec.get("status") == "done":
        return
    err = TokexportError(f"{what}: {rec.get('error')}")
    err.exit_code = rec.get("exit_code") or CRASH_EXIT
    raise err


@contextlib.contextmanager
def session(backend: str, address: str | None, cpus_per_job: int | None, jobs: int = 1) -> Iterator[Fanout]:
    with Fanout(backend, address, cpus_per_job, jobs) as fo:
        yield fo
