"""Logging: one JSON object per line by default, ``text`` for humans."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                           "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname.lower():7s} {record.getMessage()}"
        return f"{line}  {extras}" if extras else line


# Dependency warnings known to be harmless here: asyncssh names cryptography's DSA types in its
# signatures (10 CryptographyDeprecationWarning lines at import); Fraisier never offers DSA.
HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    (r"DSA is deprecated", r"asyncssh(\..*)?$"),
)


def capture_warnings() -> None:
    """Python warnings go to the ``py.warnings`` logger (so to the structured log, one object
    per line, at ``warning``), never to stderr as raw lines; the harmless ones are dropped."""
    for message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    logging.captureWarnings(True)


def setup_logging(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    if fmt == "json":
        from reconciler.observe.tracing import TraceLogFilter

        handler.addFilter(TraceLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    capture_warnings()
    for noisy in ("asyncssh", "httpx", "httpcore", "watchfiles", "git", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
