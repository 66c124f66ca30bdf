"""pytest plugin for the mutation runs (scripts/mutation.py): each mutant's tests run fastest first.

mutmut runs the tests that reach a mutant with ``-x``, in no particular order; a killed mutant costs
the time of the tests before the first that fails. Sorted by the durations mutmut measured (its
``mutmut-stats.json``, in the folder the tests run in), the quick tests of one rule come before the
slow end-to-end ones (the belief's convergence runs take seconds each). The same tests run, so the
verdicts are the same; only the time changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pytest_collection_modifyitems(items: list[Any]) -> None:
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no measurements yet (mutmut's own first run): keep pytest's order
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
