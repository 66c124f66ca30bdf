"""`cmd/step_param`: the display's up/down buttons move by the probe's own steps and stop at its ends."""

from __future__ import annotations

import pytest

from service.daemon.mqtt_commands import step_value
from service.mqtt.client import CommandError
from service.policy.autotune import ProbeLimits

LIMITS = ProbeLimits(
    gain_min_db=0.0,
    gain_max_db=90.0,
    gain_step_db=2.0,
    depth_steps_mm=(40.0, 60.0, 80.0),
    freqs_mhz=(2.5, 5.0),
)


def test_gain_moves_on_the_probes_grid() -> None:
    assert step_value(LIMITS, "gain_db", 40.0, 3) == 46.0
    assert step_value(LIMITS, "gain_db", 43.2, -1) == 42.0  # off-grid values snap first (43.2 -> 44)
    assert step_value(LIMITS, "gain_db", 88.0, 1) == 90.0


def test_depth_and_frequency_move_to_the_neighbouring_step() -> None:
    assert step_value(LIMITS, "depth_mm", 40.0, 1) == 60.0
    assert step_value(LIMITS, "depth_mm", 80.0, -2) == 40.0
    assert step_value(LIMITS, "freq_mhz", 2.5, 1) == 5.0


@pytest.mark.parametrize(
    ("param", "current", "steps", "words"),
    [
        ("gain_db", 90.0, 1, "maximum is 90 dB"),
        ("gain_db", 0.0, -1, "minimum is 0 dB"),
        ("depth_mm", 80.0, 1, "80 is the probe's last"),
        ("freq_mhz", 2.5, -1, "2.5 is the probe's first"),
    ],
)
def test_beyond_the_probes_range_is_refused_in_words(
    param: str, current: float, steps: int, words: str
) -> None:
    with pytest.raises(CommandError, match=words):
        step_value(LIMITS, param, current, steps)
