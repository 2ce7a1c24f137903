"""One error hierarchy with stable codes and a remediation hint each.

The CLI prints ``code: message`` plus the hint; logs carry both as fields. Messages never contain
secret values: callers pass references (``env:NAME``), never resolved values.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every error the reconciler reports on purpose."""

    code = "FR000"
    hint = "see the message above; `reconciler COMMAND --help` lists each option and its format"
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message

    def log_fields(self) -> dict[str, str]:
        """``extra=`` for a log record: the message, the stable code and the remediation hint."""
        return {"error": self.message, "code": self.code, "hint": self.hint}


@dataclass(frozen=True, order=True)
class SpecProblem:
    """One located problem in the desired state."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class UnexpectedError(ReconcilerError):
    """An exception the code did not foresee, caught at the boundary of one resource or one
    daemon pass: that resource (or pass) fails with this code, the others go on."""

    code = "FR001"
    hint = ("a case Fraisier does not handle yet: the resource failed, the rest of the pass went "
            "on and the daemon retries with backoff; the daemon's log has the traceback "
            "(report it); fix or revert the commit that introduced the resource's change")
    exit_code = 1

    @classmethod
    def of(cls, exc: BaseException) -> UnexpectedError:
        text = " ".join(str(exc).split())  # one line: log and status readers show it as is
        if len(text) > 300:
            text = text[:299] + "…"
        return cls(f"unexpected {type(exc).__name__}" + (f": {text}" if text else ""))

    @property
    def recorded(self) -> str:
        """The text stored on the deployment / resource: the code travels with it."""
        return f"error[{self.code}]: {self.message}"


class SpecError(ReconcilerError):
    """The desired state is invalid; carries every problem found, sorted by location."""

    code = "FR100"
    hint = ("fix each file:line:col listed above and check again with `reconciler validate PATH`; "
            "nothing was applied")

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class SourceError(ReconcilerError):
    code = "FR200"
    hint = ("check --repo/--ref/--path: `git ls-remote REPO REF` must answer from this host (with "
            "its credentials) and PATH must be a folder of that commit")


class UnsafeSourceError(SourceError):
    """Release export refused: the files hold a link or path leading out of the source tree."""

    code = "FR201"
    hint = ("replace the link by the file it points to, or make it a relative link that stays "
            "inside the folder (`git ls-files -s PATH | grep ^120000` lists links); nothing of "
            "this release was written")


class StoreError(ReconcilerError):
    code = "FR300"
    hint = ("check --db / RECONCILER_DB (sqlite:///PATH, postgresql://…, mysql://…) with "
            "`reconciler db check`, then run `reconciler db migrate` if migrations are pending")


class MigrationError(StoreError):
    code = "FR301"
    hint = ("applied migrations are immutable: restore the edited sql/<dialect>/NNN_*.sql from "
            "git and put changes in a new file; `reconciler db status` lists what is applied")


class ProviderError(ReconcilerError):
    code = "FR400"
    hint = ("the message names the host and the step; `reconciler history NAME` shows the "
            "failed step and `reconciler logs NAME` the process output")
    exit_code = 1


class SecretError(ReconcilerError):
    code = "FR500"
    hint = ("set the referenced variable in the reconciler's environment (systemd: "
            "EnvironmentFile=) or create the file readable by its user; values are never printed")


class HealthCheckFailed(ReconcilerError):
    code = "FR600"
    hint = ("`reconciler logs NAME` shows the new revision's output; check spec.health (URL, "
            "port, timing) against what the process really serves")
    exit_code = 1


class NotFound(ReconcilerError):
    code = "FR700"
    hint = ("list resources with `reconciler status`; name an ambiguous one as Kind/name or "
            "environment/Kind/name")


def os_error_reason(exc: OSError) -> str:
    """An OSError in a few words for a message that already names the address or path: its
    error code's text (asyncio's own text repeats the address), a resolver's text
    (``socket.gaierror`` codes are not error codes), or an SSL error's text in full (it names
    the check that failed, e.g. CERTIFICATE_VERIFY_FAILED)."""
    import ssl

    if isinstance(exc, ssl.SSLError):
        return str(exc)
    code = exc.errno
    if code is not None and code in errno.errorcode:
        return os.strerror(code)
    return exc.strerror or str(exc) or type(exc).__name__
