"""The display's preset table (service.daemon.mqtt_commands.PRESET_SETTINGS) against the simulator's
exam presets (sim.presets.PRESETS): two tables with different jobs, kept consistent."""

from __future__ import annotations

import pytest

from service.daemon.mqtt_commands import PRESET_SETTINGS
from service.daemon.probe import DEPTH, FREQUENCY, GAIN
from sim.presets import PRESETS


@pytest.mark.parametrize("exam", sorted(PRESETS))
def test_every_simulated_exam_has_a_display_preset_its_probe_can_take(exam: str) -> None:
    assert exam in PRESET_SETTINGS, f"sim exam {exam!r} has no row in PRESET_SETTINGS"
    row, sim = PRESET_SETTINGS[exam], PRESETS[exam]
    assert set(row) == {GAIN, DEPTH, FREQUENCY}
    # the daemon snaps depth to the probe's nearest step (limits.nearest_depth): within their span
    assert min(sim.depth_steps_mm) <= row[DEPTH] <= max(sim.depth_steps_mm), (row[DEPTH], sim.depth_steps_mm)
    assert row[FREQUENCY] in sim.freqs_mhz, (row[FREQUENCY], sim.freqs_mhz)
    assert sim.gain_range_db[0] <= row[GAIN] <= sim.gain_range_db[1]
