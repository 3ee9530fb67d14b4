"""Log output shared by the orchestrator and the agent: `--log-format text|json`.

`json` writes one JSON object per line: `ts` (ISO 8601, UTC), `level`, `logger`, `message`,
plus the structured fields a call passed in `extra` (e.g. `task_id`, `event`, `round`,
`samples_trained`, `upload_bytes`, `connection`), and `exc` with the traceback of an error.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has: anything else on a record came from `extra`.
# (uvicorn's `color_message` repeats the message with terminal colours.)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record (and so per line)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_handler() -> logging.Handler:
    """A stderr handler writing `JSONFormatter` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    return handler


def check_format(log_format: str) -> None:
    """ValueError unless `log_format` is one of `LOG_FORMATS`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, "
                         f"got {log_format!r}")
