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
  9  `tokexport check-target`: the graph has errors for the target (the report names each node)
"""
from __future__ import annotations


class TokexportError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""

    exit_code = 2

    def lines(self) -> list[str]:
        """What the CLI prints, one ``error:`` line each (one, except for :class:`SchemaErrors`)."""
        return [str(self)]


class InputError(TokexportError):
    """Bad recipe, model, path or argument."""

    exit_code = 2


class SchemaErrors(InputError):
    """Every schema error of one input file, one per line of the message (``FILE: field: problem``);
    the CLI prints each as its own ``error:`` line."""

    def lines(self) -> list[str]:
        return [line for line in str(self).split("\n") if line.strip()]


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


EXIT_OK = 0
EXIT_INPUT = InputError.exit_code
EXIT_PARITY = ParityError.exit_code
EXIT_ACCURACY = AccuracyError.exit_code
EXIT_ENV = EnvironmentProblem.exit_code
EXIT_REGRESSION = RegressionError.exit_code
EXIT_UNREADABLE = UnreadableReport.exit_code
EXIT_NO_TENSORRT = TensorRTUnavailable.exit_code
EXIT_TARGET = TargetCheckFailed.exit_code
