"""Command-line plumbing shared by every command module: consoles, the one-line error exit, the rich
progress implementation of the pipeline's stage hooks, logging set-up, the version line, where
the shipped recipes live, and the result tables of convert, check, sweep and search.

Cheap to import on purpose (typer, rich's console, the standard library): ``--help``, ``--version``
and bad-input errors must come back without loading torch, transformers, onnx or optimum, so nothing
here imports them, and rich's progress machinery is only imported when a progress display starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from ..errors import InputError, TokexportError
from ..shipped import find_shipped_recipe

if TYPE_CHECKING:
    from rich.progress import Progress

LOGGER_NAME = "tokexport"
logger = logging.getLogger(LOGGER_NAME)

# Final results (tables, "wrote ..." lines) go to stdout; progress, messages and errors to stderr.
PIPED_WIDTH = 200  # columns of output that is not a terminal (a pipe, a file, a CI log)


def _width(stream) -> int | None:
    """None (rich asks the terminal) on a terminal or when $COLUMNS says; otherwise PIPED_WIDTH, so that a
    table piped or logged in CI keeps its full cells ("zero-tprune", not "zero-…") instead of rich's 80."""
    if os.environ.get("COLUMNS"):
        return None
    try:
        return None if stream.isatty() else PIPED_WIDTH
    except (AttributeError, ValueError):  # a closed or unusual stream
        return PIPED_WIDTH


out_console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))
_DEFAULT_ERR_CONSOLE = err_console
# In quiet mode ``err_console`` is swapped for one that never counts as a terminal: rich then draws no
# live progress or status spinner on it (commands that build their own Progress/status on
# ``err_console`` go quiet too), while plain prints (errors, verdict lines) still come through.
_QUIET_ERR_CONSOLE = Console(stderr=True, force_terminal=False, width=_width(sys.stderr))
_quiet = False

# Distributions whose versions ``tokexport --version`` reports (read from their metadata, not imported).
VERSION_DEPENDENCIES = ("torch", "transformers", "optimum", "onnx", "onnxruntime", "onnxruntime-gpu")


def one_line(message: str) -> str:
    """``message`` on one line (line breaks become spaces), so an error can never span lines."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(e: TokexportError) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr (one line per error for :class:`SchemaErrors`:
    every schema error of a recipe) and exit with the error's code. Arguments the library names
    (:func:`tokexport.errors.option`) are shown as the command's flags.

    The message is printed literally: text in it that looks like rich markup (``[bold]``, ``[/]``,
    ``[red]`` in a path or a recipe value) is shown as written, never interpreted."""
    for message in [one_line(line) for line in e.lines(cli=True)] or [type(e).__name__]:
        message = message or type(e).__name__
        if _configured():  # the log file records it too (unconfigured, logging's last resort would print it twice)
            logger.error("error: %s", message, extra={"console": False})
        err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def os_error(e: OSError) -> TokexportError:
    """An OS error that reached the command line: exit 10 when it means the output cannot be written
    (disk full, file too large, read-only), else a bad path (exit 2), each as one line naming the file."""
    from ..errors import write_error
    from ..files import os_problem

    where = os.fsdecode(e.filename) if e.filename is not None else "tokexport"
    return write_error(e, where) or InputError(f"{where}: {os_problem(e)}")


def result(message: str) -> None:
    """A final result line: stdout (also in quiet mode), and the log file."""
    out_console.print(Text(message), highlight=False, soft_wrap=True)
    if _configured():
        logger.info("%s", message, extra={"console": False})


class RichStages:
    """The pipeline's progress hooks (``stage``/``log``) on a rich ``Progress``.

    Stage starts and ends are debug messages (shown with ``-v``, always in the log file); ``log``
    messages are info messages (hidden with ``-q``). Messages are never read as rich markup."""

    def __init__(self, progress: Progress):
        self.progress = progress

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None):
        task = self.progress.add_task(name, total=total)
        logger.debug("stage: %s", name)
        t0 = time.perf_counter()
        try:
            yield lambda n=1: self.progress.advance(task, n)
        finally:
            t = self.progress.tasks[[t.id for t in self.progress.tasks].index(task)]
            self.progress.update(task, total=t.total or 1, completed=t.total or 1)
            logger.debug("stage done: %s (%.1f s)", name, time.perf_counter() - t0)

    def log(self, message: str) -> None:
        logger.info("%s", message)


def progress() -> Progress:
    """The progress display every long command shows on stderr (nothing in quiet mode)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # Off in quiet mode, and when stderr is not a terminal: rich draws nothing there but a stray blank line.
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=_quiet or not err_console.is_terminal,
    )


@contextlib.contextmanager
def progress_stages() -> Iterator[RichStages]:
    """``with progress_stages() as stages:`` a live progress display and its ``RichStages``."""
    with progress() as p:
        yield RichStages(p)


# --- logging ---------------------------------------------------------------------------------------


class ConsoleLogHandler(logging.Handler):
    """tokexport's log messages on stderr, through ``err_console`` (so they print above a live progress
    display), as plain text. Records logged with ``extra={"console": False}`` are for the log file only."""

    _PREFIX = {
        logging.DEBUG: "debug: ",
        logging.WARNING: "warning: ",
        logging.ERROR: "error: ",
        logging.CRITICAL: "error: ",
    }

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True) is False:
            return
        try:
            msg = record.getMessage()
            prefix = self._PREFIX.get(record.levelno, "")
            if prefix and not msg.lower().startswith(prefix.strip()):
                msg = prefix + msg
            err_console.print(Text(msg), highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def _configured() -> bool:
    """Whether ``setup_logging`` installed the command line's handlers."""
    return any(getattr(h, "_tokexport_cli", False) for h in logger.handlers)


_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
    """Configure the ``tokexport`` logger for one command-line run.

    Default: info messages and warnings on stderr. ``verbose``: debug messages too (stage starts and
    ends with their durations). ``quiet``: only errors on stderr, no progress display; final result
    lines still go to stdout. ``log_file``: every message (debug included) with a timestamp, appended
    to that file, whatever the console level. Raises ``InputError`` (one line) when both ``verbose``
    and ``quiet`` are given or the log file cannot be opened."""
    global err_console, _quiet
    reset_logging()  # an earlier run's handlers (several runs in one process: tests)
    if verbose and quiet:
        raise InputError("-v/--verbose and -q/--quiet contradict each other; give one of them")
    _quiet = quiet
    err_console = _QUIET_ERR_CONSOLE if quiet else _DEFAULT_ERR_CONSOLE

    console = ConsoleLogHandler(logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        fh = LogFileHandler(open_log_file(log_file))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(_FILE_FORMAT))
        handlers.append(fh)
    for h in handlers:
        h._tokexport_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose or log_file is not None else logging.INFO)
    # the run's command line and version, for the log file (an appended log holds many runs)
    logger.info("tokexport %s: %s", version(), shlex.join(["tokexport", *sys.argv[1:]]), extra={"console": False})


# the first line every log file tokexport writes starts like this (the run's command line, _FILE_FORMAT)
_LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +tokexport")


class LogFileHandler(logging.StreamHandler):
    """The --log-file handler: writes to the file :func:`open_log_file` opened, and closes it."""

    def close(self) -> None:
        try:
            if not self.stream.closed:
                self.flush()
                self.stream.close()
        finally:
            super().close()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass  # a full disk under the log file must not print a traceback per message, nor stop the run


def open_log_file(path: Path):
    """The --log-file opened for appending, by the rules of every file tokexport writes (docs/files.md):
    never through a symbolic link, never under /proc or /sys, never inside a tokexport output (which a
    run may replace), and never any file but a new one, an empty one or a log tokexport wrote before —
    so the recipe, a report or any other input given by mistake is refused, not appended to.
    Registers the file with :mod:`tokexport.outdir`, so no output of this run may hold it."""
    import stat

    from .. import outdir

    raw = os.path.expanduser(os.fspath(path))
    shown = f"--log-file {path}"
    absolute = os.path.abspath(raw)
    real = os.path.realpath(absolute)
    for special in ("/proc", "/sys"):
        if any(p == special or p.startswith(special + "/") for p in (absolute, real)):
            raise InputError(f"{shown}: is under {special}, which holds no ordinary files; give a log file path")
    for folder in Path(real).parents:
        if outdir.is_tokexport_output(folder):
            raise InputError(
                f"{shown}: is inside {folder}, a tokexport output (a later run may replace it); "
                "keep the log outside the outputs"
            )
    try:
        fd = os.open(raw, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(
                f"{shown}: is a symbolic link; tokexport never writes through one (give the real path)"
            ) from None
        from ..files import os_problem

        raise InputError(
            f"{shown}: cannot open it for appending ({os_problem(e)}); give a writable file path"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            from ..files import kind_of

            raise InputError(f"{shown}: is {kind_of(st.st_mode)}, not a regular file; give a log file path")
        if st.st_size and not _LOG_LINE.match(os.pread(fd, 256, 0)):
            raise InputError(
                f"{shown}: exists and is not a tokexport log (the recipe, a report or another file "
                "of yours?); it is left as it is: give a new file, or a log tokexport wrote"
            )
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        stream = os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
    outdir.protect_written(absolute, "--log-file")
    return stream


def reset_logging() -> None:
    """Remove what ``setup_logging`` installed (handlers, level, quiet console)."""
    global err_console, _quiet
    from .. import outdir

    outdir.protect_written(None)
    for h in [h for h in logger.handlers if getattr(h, "_tokexport_cli", False)]:
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.NOTSET)
    err_console, _quiet = _DEFAULT_ERR_CONSOLE, False


def log_exit(code: int | str | None) -> None:
    """Record the process's exit code in the log file (nothing on the console)."""
    if _configured():
        logger.debug("exit code %s", code if code is not None else 0, extra={"console": False})


# --- version ---------------------------------------------------------------------------------------


def version() -> str:
    from .. import __version__

    return __version__


def version_lines() -> list[str]:
    """``tokexport X.Y.Z`` and, on a second line, the installed versions of the main dependencies,
    read from package metadata (importing torch just to print its version would take seconds)."""
    from importlib import metadata

    deps = []
    for name in VERSION_DEPENDENCIES:
        try:
            deps.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name != "onnxruntime-gpu":
                deps.append(f"{name} (not installed)")
    py = ".".join(str(v) for v in sys.version_info[:3])
    return [f"tokexport {version()}", f"python {py}, " + ", ".join(deps)]


# --- shipped recipes -------------------------------------------------------------------------------


def resolve_recipe(recipe: Path) -> Path:
    """The recipe file a command should read: ``recipe`` itself when it exists, otherwise the shipped
    recipe of that name (said on stderr, not in quiet mode). InputError (one line) when neither exists."""
    from ..files import os_problem

    try:
        os.stat(recipe)
        return recipe  # a folder, a FIFO or a device is refused by the recipe reader, by what it is
    except FileNotFoundError:
        pass
    except OSError as e:
        raise InputError(f"{recipe}: cannot read it: {os_problem(e)}; give the path of a recipe file") from None
    shipped = None if recipe.is_absolute() else find_shipped_recipe(str(recipe))
    if shipped is None:
        raise InputError(
            f"{recipe}: recipe file not found, and no shipped recipe has that name; list the "
            "shipped ones with `tokexport recipes list`"
        )
    logger.info("%s: no such file here; using the shipped recipe %s", recipe, shipped)
    return shipped


def console_summary(report: dict, task_lines: Sequence[str] = ()):
    """The report as the terminal shows it after `convert`: the task's lines, the parity, accuracy and
    speed tables, the verdict."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from ..stages import render

    parts = [Text(line) for line in task_lines]
    for title, header, rows, right in (
        ("parity", ["graph", "max abs", "mean abs", "tolerance", ""], render.parity_rows(report), False),
        (
            "accuracy against the original",
            ["metric", "original", "reduced", "delta", "threshold", ""],
            render.metric_rows(report),
            False,
        ),
        (
            "speed" + (f" ({report['bench']['runtime']})" if report.get("bench") else ""),
            ["batch", "baseline ms", "reduced ms", "base p90", "red p90", "measured"],
            render.speed_rows(report),
            True,
        ),
    ):
        if not rows:
            continue
        t = Table(title=title, show_edge=False)
        for h in header:
            t.add_column(h, justify="right" if right else "left")
        for r in rows:
            t.add_row(*[escape(c) for c in r])
        parts.append(t)
    parts.append(
        Text("PASS", style="bold green")
        if report["passed"]
        else Text("FAIL: " + "; ".join(report["failures"]), style="bold red")
    )
    return Group(*parts)


# ------------------------------------------------------------------ the result tables of check, sweep, search


def fmt_figure(v) -> str:
    """A figure as the check and sweep tables show it: integers with thousands separators, very small or
    very large floats in 4 significant digits."""
    from ..report import fmt_value

    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    small_or_huge = isinstance(v, float) and (abs(v) < 1e-3 or abs(v) >= 1e4)
    return fmt_value(v, float_format=".4g" if small_or_huge else None)


def print_check(result, title: str) -> None:
    """`check`'s table, figure by figure, its notes and the count line (stdout)."""
    from rich.table import Table

    t = Table(title=title, show_edge=False)
    t.add_column("figure", no_wrap=True)
    for h in ("baseline", "report", "rule", ""):
        t.add_column(h)
    style = {"PASS": "green", "FAIL": "bold red", "MISSING": "yellow"}
    for r in result.rows:
        t.add_row(r.name, fmt_figure(r.baseline), fmt_figure(r.current), r.rule, f"[{style[r.status]}]{r.status}[/]")
    out_console.print(t)
    for note in result.notes:
        out_console.print(f"note: {note}", highlight=False)
    n_cmp = sum(r.baseline is not None and r.current is not None for r in result.rows)
    gone = sum(r.current is None for r in result.rows)
    extra = sum(r.baseline is None for r in result.rows)
    out_console.print(
        f"{n_cmp} figures compared, {len(result.failed)} failed, {gone} missing from the report"
        + (f", {extra} not in the baseline" if extra else ""),
        highlight=False,
    )


def print_sweep(summary: dict, out_dir: Path) -> None:
    """Each recipe's table of converted points, its failed points, and what was written."""
    from rich.table import Table

    from ..tasks.axes import axis_of_report

    for s in summary.get("sweeps") or [summary]:
        kind = s["task_kind"]
        done_pts = [p for p in s["points"] if p["status"] == "done"]
        cols = axis_of_report(kind).cli_columns(s) + [
            (f"{s['metric']}", lambda p: f"{p['metric']:.4f}"),
            ("drop", lambda p: f"{p['metric_drop']:+.4f}"),
            ("report", lambda p: p["passed"]),
            ("Pareto", lambda p: "★" if p["pareto"] else ""),
        ]
        t = Table(*(h for h, _ in cols), show_edge=False, title=s["recipe_path"] if "sweeps" in summary else None)
        for p in done_pts:
            t.add_row(*((c if isinstance(c := cell(p), str) else fmt_figure(c)) for _, cell in cols))
        out_console.print(t)
        vkey = s["varied"]["key"]
        for p in s["points"]:
            if p["status"] != "done":
                out_console.print(
                    f"failed: {p['method']} {s['varied']['label']} {p[vkey]:g}: exit {p['exit_code']}: {p['error']}",
                    highlight=False,
                    soft_wrap=True,
                )
        if s["resumed"]:
            out_console.print(f"{s['resumed']} point(s) kept from the earlier run (--resume)", highlight=False)
    if "sweeps" in summary:
        out_console.print(
            f"wrote {out_dir}/index.html, index.json and, per recipe, "
            + ", ".join(f"{e['dir']}/" for e in summary["recipes"])
            + " (sweep.json, sweep.html, pareto.png, runs/)",
            highlight=False,
        )
    else:
        out_console.print(f"wrote {out_dir}/sweep.json, sweep.html, pareto.png, runs/", highlight=False)
    out_console.print(f"note: {summary.get('timing', '')}".rstrip(), highlight=False)


def _print_knob_search(summary: dict, out_dir: Path) -> None:
    """The recipe's own value and the searched one, how the bisection ended, the verdict, what was written."""
    metric = summary["metric"]
    for label, e in (("recipe's own", summary["reference"]), ("searched", summary["winner"])):
        sp = ", ".join(f"b{b} {v:.3f}×" for b, v in e["speedups"].items())
        out_console.print(
            f"{label:>16}: {summary['knob']} {e['value']} → {metric} drop {e['drop']:+.4f}"
            f" ({'within budget' if e['feasible'] else 'over budget or a threshold failed'})"
            + (f"; measured speed-up {sp}" if sp else ""),
            highlight=False,
        )
    out_console.print(
        f"evaluated {summary['evaluations']} candidates (at most {summary['max_evals']}), "
        f"{'converged' if summary['converged'] else 'stopped by --max-evals'}",
        highlight=False,
    )
    out_console.print(f"verdict: {summary['verdict']}", highlight=False)
    out_console.print(
        f"wrote {out_dir}/{summary['winner_recipe']}, search.json, winner/"
        + (", reference/" if summary["measured"]["reference"] else ""),
        highlight=False,
    )


def _print_schedule_search(summary: dict, out_dir: Path) -> None:
    """The recipe's schedule and the searched one (PyTorch), both measured on model.onnx, the verdict, what
    was written."""
    metric = summary["metric"]
    w, r = summary["winner"], summary["reference"]
    for label, e in (("recipe schedule", r), ("searched", w)):
        out_console.print(
            f"{label:>16}: after blocks {e['prune_layers']} keep {e['keep']} → "
            f"FLOPs ×{e['flops_ratio']:.3f}, "
            f"{metric} drop {e['drop']:+.4f} (PyTorch)",
            highlight=False,
        )
    for label, m in summary["measured"].items():
        if m:
            sp = ", ".join(f"b{b} {v:.3f}×" for b, v in m["speedups"].items())
            out_console.print(
                f"{label:>16}: model.onnx {metric} drop {m['drop']:+.4f}; measured speed-up {sp}", highlight=False
            )
    out_console.print(f"verdict: {summary['verdict']}", highlight=False)
    out_console.print(
        f"wrote {out_dir}/{summary['winner_recipe']}, search.json, winner/"
        + (", reference/" if summary["measured"]["reference"] else ""),
        highlight=False,
    )


def print_search(summary: dict, out_dir: Path) -> None:
    """`search`'s result: a visual-token or vocab search (a knob: K, the target vocabulary size) or a ViT
    schedule search."""
    if "knob" in summary:
        _print_knob_search(summary, out_dir)
    else:
        _print_schedule_search(summary, out_dir)
