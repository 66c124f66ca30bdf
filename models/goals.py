"""Goals report: each figure against its target, met or not (None when there is no figure).

One function for the three places that judge figures against goals: the model build's acceptance
(``models/manifest.py``), the closed-loop evaluation (``service/tools/evaluate/runner.py``) and the
benchmarks (``service/tools/benchmark/suite.py``). It lives in ``models`` because models may not
import the service, while the service may import models; it imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Goal = tuple[str, float]  # (operator, target): ">=", "<=" or "<"

_OPS = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    ">": lambda v, t: v > t,
}


def met(value: float | None, goal: Goal) -> bool | None:
    """Whether ``value`` meets ``goal``; None when there is no figure."""
    op, target = goal
    return None if value is None else bool(_OPS[op](value, target))


def goals_report(values: Mapping[str, Any], goals: Mapping[str, Goal]) -> dict[str, dict[str, Any]]:
    """Each goal: ``{"value": figure, "goal": "<op> <target>", "met": True | False | None}``."""
    return {
        key: {"value": values.get(key), "goal": f"{goal[0]} {goal[1]:g}", "met": met(values.get(key), goal)}
        for key, goal in goals.items()
    }
