"""Project exceptions. Each carries the process exit code the CLI turns it into.

Exit codes (stable, CI scripts rely on them):
  0  every check passed
  2  bad input: recipe, model, paths, CLI arguments (nothing is written)
  3  ONNX vs PyTorch parity failure (outputs are written, report says FAIL)
  4  accuracy against the original below the recipe's thresholds (report says FAIL)
  5  environment problem: an optional dependency or resource is missing
"""
from __future__ import annotations


class TokexportError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""

    exit_code = 2


class InputError(TokexportError):
    """Bad recipe, model, path or argument."""

    exit_code = 2


class EnvironmentProblem(TokexportError):
    """A missing optional package or resource."""

    exit_code = 5


class ParityError(TokexportError):
    exit_code = 3


class AccuracyError(TokexportError):
    exit_code = 4


EXIT_OK = 0
EXIT_INPUT = InputError.exit_code
EXIT_PARITY = ParityError.exit_code
EXIT_ACCURACY = AccuracyError.exit_code
EXIT_ENV = EnvironmentProblem.exit_code
