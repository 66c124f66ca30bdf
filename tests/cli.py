"""Running the `sonoguide` command as a user does: a subprocess from the repository root.

``python -m service`` rather than the installed script, so a test runs this checkout's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sonoguide(
    *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sonoguide ARGS`` with ``env`` (default: this process's) and this checkout on PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=dict(os.environ if env is None else env, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
