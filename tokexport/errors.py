"""Project exceptions. Each carries the process exit code the CLI turns it into.

Exit codes (stable, CI scripts rely on them):
  0  every check passed
  2  bad input: recipe, model, paths, CLI arguments (nothing is written)
  3  ONNX vs PyTorch parity failure (outputs are written, report says FAIL)
  4  accuracy against the original below the recipe's thresholds (report says FAIL)
  5  environment problem: an optional dependency or resource is missing
  6  `tokexport check`: a figure regressed beyond its tolerance against the baseline report
  7  `tokexport check`: a report or baseline cannot be read (missing, not JSON, unknown schema)
  8  `tokexport build`: TensorRT or an NVIDIA GPU is absent (build on the device from the bundle)
  9  `tokexport check-target` / `tokexport bundle`: the graph has errors for the target (each node named)
 10  the output cannot be written: disk full, file too large, read-only file system, no permission
     (nothing partial is left; the previous output, if any, is kept)
"""

from __future__ import annotations

import errno
import re

# An argument named inside a message: ``\x1fname\x1flibrary spelling\x1fflag\x1e`` (see :func:`option`).
_OPTION = re.compile("\x1f([A-Za-z_][A-Za-z0-9_]*)\x1f([^\x1f\x1e]*)\x1f([^\x1f\x1e]*)\x1e")


def option(name: str, spelled: str | None = None, flag: str | None = None) -> str:
    """How a library message names an argument its caller gave: ``max_drop`` (or ``spelled``, e.g.
    ``force=True``) in the library's own message (``str(error)``), the command-line flag (``flag``, by default
    ``--max-drop``) where the CLI prints it (:meth:`TokexportError.lines` with ``cli=True``). The library
    knows its parameters, the CLI its flags."""
    return f"\x1f{name}\x1f{spelled or name}\x1f{flag or '--' + name.replace('_', '-')}\x1e"


def _render(text: str, cli: bool) -> str:
    return _OPTION.sub(lambda m: m.group(3) if cli else m.group(2), text)


class TokexportError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""

    exit_code = 2

    def __str__(self) -> str:
        return _render(super().__str__(), cli=False)

    def lines(self, cli: bool = False) -> list[str]:
        """What the CLI prints, one ``error:`` line each (one, except for :class:`SchemaErrors`); ``cli``: the
        arguments named by their command-line flags (:func:`option`)."""
        return [_render(super().__str__(), cli)]


class InputError(TokexportError):
    """Bad recipe, model, path or argument."""

    exit_code = 2


class SchemaErrors(InputError):
    """Every schema error of one input file, one per line of the message (``FILE: field: problem``);
    the CLI prints each as its own ``error:`` line."""

    def lines(self, cli: bool = False) -> list[str]:
        return [line for line in super().lines(cli)[0].split("\n") if line.strip()]


class ContractError(TokexportError):
    """A report that breaks the report contract: a bug in tokexport, not in the input. Nothing is written."""

    exit_code = 1


class EnvironmentProblem(TokexportError):
    """A missing optional package or resource."""

    exit_code = 5


class ParityError(TokexportError):
    exit_code = 3


class AccuracyError(TokexportError):
    exit_code = 4


class RegressionError(TokexportError):
    """`tokexport check`: the report is worse than the baseline beyond the tolerances."""

    exit_code = 6


class UnreadableReport(TokexportError):
    """`tokexport check`: a report/baseline file is missing, not JSON, or of an unsupported schema."""

    exit_code = 7


class TensorRTUnavailable(TokexportError):
    """`tokexport build` needs the `tensorrt` package and a visible NVIDIA GPU."""

    exit_code = 8


class TargetCheckFailed(TokexportError):
    """`tokexport check-target`: the graph would not parse, or would parse wrongly, on the target."""

    exit_code = 9


class OutputWriteError(TokexportError):
    """The output could not be written (disk full, file too large, read-only file system, no permission).
    The staging directory is removed; an earlier output stays as it was."""

    exit_code = 10


# errno values that only a write produces: mapped to OutputWriteError wherever they surface
WRITE_ERRNOS = tuple(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS") if hasattr(errno, n))
# ... and the ones a write produces among others (no permission): mapped when the failing path is the output's
PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM)


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def write_failure(e: BaseException, inside: str | None = None) -> OSError | None:
    """The OS error behind ``e`` (or behind whatever ``e`` was raised from) that means the output
    cannot be written: ENOSPC, EFBIG, EDQUOT, EROFS, or EACCES/EPERM on a path under ``inside``.
    Libraries that wrap the OS error in their own exception (a Rust or C++ writer) are recognised by
    the OS error text in their message. None when ``e`` is something else."""
    import os

    for x in _chain(e):
        if isinstance(x, OSError) and x.errno is not None:
            if x.errno in WRITE_ERRNOS:
                return x
            if (
                x.errno in PERMISSION_ERRNOS
                and inside
                and x.filename is not None
                and os.path.abspath(os.fsdecode(x.filename)).startswith(inside.rstrip("/") + "/")
            ):
                return x
    for x in _chain(e):
        text = str(x)
        for code in WRITE_ERRNOS:
            if os.strerror(code) in text or f"os error {code})" in text:
                return OSError(code, os.strerror(code))
    return None


def write_error(e: BaseException, what: str, inside: str | None = None) -> OutputWriteError | None:
    """``OutputWriteError`` (exit 10, one line naming ``what``) when ``e`` is a failure to write."""
    x = write_failure(e, inside)
    if x is None:
        return None
    return OutputWriteError(
        f"{what}: cannot write the output ({x.strerror or 'write error'}); nothing was left "
        "behind and any earlier output is unchanged: free space or choose another location"
    )


EXIT_OK = 0
EXIT_INPUT = InputError.exit_code
EXIT_PARITY = ParityError.exit_code
EXIT_ACCURACY = AccuracyError.exit_code
EXIT_ENV = EnvironmentProblem.exit_code
EXIT_REGRESSION = RegressionError.exit_code
EXIT_UNREADABLE = UnreadableReport.exit_code
EXIT_NO_TENSORRT = TensorRTUnavailable.exit_code
EXIT_TARGET = TargetCheckFailed.exit_code
EXIT_WRITE = OutputWriteError.exit_code
