"""Logging set-up for an instance: text or JSON lines on stdout."""

from __future__ import annotations

import json
import logging
import sys
import time

from pulsarfunc.runtime.config import FunctionConfig, LogFormat


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the function's name attached."""

    def __init__(self, fqfn: str) -> None:
        super().__init__()
        self._fqfn = fqfn

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "fqfn": self._fqfn,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(config: FunctionConfig) -> None:
    """Route every logger to stdout at the configured level and format."""
    handler = logging.StreamHandler(sys.stdout)
    if config.log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter(config.fqfn))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    # The C++ client is chatty at INFO (every connection and lookup).
    logging.getLogger("pulsar").setLevel(logging.DEBUG if config.debug else logging.WARNING)
