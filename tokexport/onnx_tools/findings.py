"""What a target check finds: one :class:`Finding` per problem of a node (or of the graph), and the
:class:`TargetCheck` of one graph on one target (with the polygraphy lint summary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokexport.targets import Target


@dataclass
class Finding:
    """One problem of one node (or of the graph when ``node`` is None) for one target."""

    level: str  # "error": the parser rejects it or builds wrong numbers; "warning": needs a look
    code: str
    node: str | None
    message: str
    fix: str = ""
    op: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.level.upper()} {self.code}{where}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


@dataclass
class TargetCheck:
    """Findings of :func:`check_target` for one graph and one target, plus the polygraphy lint summary."""

    target: Target
    model: str
    opset: int | None
    findings: list[Finding]
    lint: dict | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "target": self.target.name,
            **{k: v for k, v in self.target.to_dict().items() if k != "name"},
            "model": self.model,
            "model_opset": self.opset,
            "passed": self.passed,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
            "lint": self.lint,
        }
