"""One error hierarchy with stable codes and a remediation hint each.

The CLI prints ``code: message`` plus the hint; logs carry both as fields. Messages never contain
secret values: callers pass references (``env:NAME``), never resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every error the reconciler reports on purpose."""

    code = "FR000"
    hint = ""
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, order=True)
class SpecProblem:
    """One located problem in the desired state."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class SpecError(ReconcilerError):
    """The desired state is invalid; carries every problem found, sorted by location."""

    code = "FR100"
    hint = "fix the files listed above; nothing was applied"

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(ReconcilerError):
    code = "FR200"
    hint = "check --repo/--ref/--path and that the repository is reachable"


class StoreError(ReconcilerError):
    code = "FR300"
    hint = "check --db / RECONCILER_DB and run `reconciler db migrate`"


class MigrationError(StoreError):
    code = "FR301"
    hint = ("an applied migration file was edited or a migration failed; restore the file or "
            "fix the database by hand")


class ProviderError(ReconcilerError):
    code = "FR400"
    hint = "see the provider's message; the deployment journal has the step that failed"
    exit_code = 1


class SecretError(ReconcilerError):
    code = "FR500"
    hint = "define the referenced environment variable or file (its value is never printed)"


class HealthCheckFailed(ReconcilerError):
    code = "FR600"
    hint = "check the service's logs with `reconciler logs NAME`"
    exit_code = 1


class NotFound(ReconcilerError):
    code = "FR700"
    hint = "list resources with `reconciler status`"
