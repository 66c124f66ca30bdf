"""Logging shared by every entry point.

On a terminal: short human-readable lines. Under systemd (stderr connected to journald, which sets
JOURNAL_STREAM): one line of key=value pairs per record, which journald stores and `journalctl -o
cat` shows greppable. A per-device prefix comes from
:func:`firmware_bridge.devicelog.device_logger` (the ``device`` field these formatters show).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``level=INFO logger=firmware_bridge.link device=probe:ttyACM0 msg="..."`` (no timestamp: journald has one)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [("level", record.levelname), ("logger", record.name)]
        device = getattr(record, "device", "")
        if device:
            fields.append(("device", str(device)))
        fields.append(("msg", record.getMessage()))
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{k}={_quote(v)}" for k, v in fields)


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        device = getattr(record, "device", "")
        if device and not getattr(record, "_prefixed", False):
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"[{device}] {record.getMessage()}"
            record.args = None
            record._prefixed = True
        return super().format(record)


def under_journald(stream: TextIO) -> bool:
    """True when ``stream`` is the journald stream systemd gave us (see systemd.exec, $JOURNAL_STREAM)."""
    journal = os.environ.get("JOURNAL_STREAM", "")
    if not journal:
        return False
    try:
        dev, ino = (int(x) for x in journal.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(
    level: int = logging.INFO, fmt: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Install one handler on the root logger; ``fmt`` is ``auto``, ``human`` or ``journal``."""
    stream = stream or sys.stderr
    use_journal = fmt == "journal" or (fmt == "auto" and under_journald(stream))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter() if use_journal else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_sonoguide", False):
            root.removeHandler(old)
    handler._sonoguide = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
