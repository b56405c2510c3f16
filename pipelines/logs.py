"""Logging: one line per event, optional JSON lines, and redaction of every known secret value.

Secrets are registered by `pipelines.config` when it resolves credentials, so a password can never reach a
log line, an exception message written through logging, or a run report rendered with `redact()`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret value so that `redact` and every log line hide it. Short values are ignored
    (they would redact ordinary words); the sandbox's and real credentials are far longer."""
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    if not text or not _SECRETS:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        record.msg = redact(msg)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            payload[key] = value
        # structured detail too bulky for a text line (e.g. progress counters per source)
        for key, value in getattr(record, "json_fields", {}).items():
            payload[key] = value
        if record.exc_text:
            payload["exc"] = record.exc_text
        return redact(json.dumps(payload, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        # one line per event: fold tracebacks into the line
        return redact(base.replace("\n", " | "))


class _KeepFormatterHandler(logging.StreamHandler):
    """A stream handler whose formatter cannot be replaced from outside (dlt assigns its own to the handler)."""

    _kept: logging.Formatter | None = None

    def keep(self, formatter: logging.Formatter | None) -> None:
        self._kept = formatter

    @property  # type: ignore[override]
    def formatter(self) -> logging.Formatter | None:
        return self._kept

    @formatter.setter
    def formatter(self, value: logging.Formatter | None) -> None:
        pass


def setup_logging(fmt: str = "text", verbose: int = 0) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    # dlt configures its own "dlt" logger (no propagation) when a pipeline starts, reusing a handler it finds there
    # and setting its own formatter on it. Give it one that keeps our formatter, redacts, and shares our handler's
    # lock: dlt's lines then look like ours (JSON in JSON mode, so a log shipper never meets a line it cannot parse)
    # and a dlt line and ours written from two threads never mix.
    dlt_handler = _KeepFormatterHandler(sys.stderr)
    dlt_handler.keep(handler.formatter)
    dlt_handler.lock = handler.lock
    dlt_handler.addFilter(RedactingFilter())
    logging.getLogger("dlt").handlers[:] = [dlt_handler]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("loyalty").setLevel(min(level, logging.INFO))


def get_logger(name: str) -> logging.Logger:
    """Project loggers live under `loyalty.`; pass structured fields with `extra={"fields": {...}}` (shown as
    key=value in text, keys in JSON) or `extra={"json_fields": {...}}` (JSON only)."""
    return logging.getLogger(f"loyalty.{name}")
