"""Structured logs: `--log-format json` writes one JSON object a line, naming the job or pod it is about."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, and `job` / `object` when the record is about one (kopf's per-object
    loggers carry `k8s_ref`; trainguard's records carry `job`)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            where = f"{ref.get('namespace')}/{ref['name']}" if ref.get("namespace") else str(ref["name"])
            kind = str(ref.get("kind") or "")
            out["object"] = {"kind": kind, "name": where}
            if kind == "AgentTrainingJob":
                out["job"] = where
            elif kind == "Pod":
                out["pod"] = where
        job = getattr(record, "job", None)
        if job:
            out["job"] = job
        pod = getattr(record, "pod", None)
        if pod:
            out["pod"] = pod
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ref = getattr(record, "k8s_ref", None)
        where = getattr(record, "job", None) or (
            f"{ref.get('namespace')}/{ref.get('name')}" if isinstance(ref, dict) and ref.get("name") else None
        )
        return f"{text} [{where}]" if where else text


def configure(log_format: str, level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "kubernetes", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if level != "DEBUG":  # kopf says "Handler ... succeeded" for every watch event of every pod
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
