"""The relay's log output: one line per record, as text or as JSON (`--log-format json`).

Loggers, one per area: `relay` (startup, shutdown), `relay.transport` (connections, the HTTP
side), `relay.auth` (refused sign-ins), `relay.core` (protocol violations, failures of the
messaging core), `relay.store` (the store's trouble and retention).

Structured fields travel as `extra=` of the logging call (`conn`, `peer`, `user`, `device`,
`code`, `reason`, `by`, ...): the JSON format writes them as keys of the line's object, the text
format appends them as `key=value`. Every message names what happened in words as well, so the
text line reads on its own.

Invariants (tests/test_logs.py holds both formats to them):
- a JSON line is one object: `ts` (RFC 3339, UTC, milliseconds), `level`, `logger`, `msg`, the
  extra fields, and `exc` (the traceback) only for a record logged with one;
- no log line carries a message's text, a token or a secret: call sites pass ids, codes and the
  relay's own fixed reasons, never what a client wrote;
- a client's mistake is logged at INFO or WARNING without a traceback; a traceback means a
  fault of the relay.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final, TextIO

import orjson

#: The formats `--log-format` accepts.
LOG_FORMATS: Final = ("text", "json")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call site passed with `extra=`, in the order given (None: left out)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 UTC with milliseconds: 2026-12-05T05:18:41.123Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (orjson), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with the extra fields appended as `key=value`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = extras(record)
        if not fields:
            return text
        return text + " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()
    return text


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `--log-format` (`text` or `json`)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """What `relay serve` does: every record at `level` or above to stderr (or `stream`), one
    line each, in `log_format`. Replaces the root logger's handlers."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
