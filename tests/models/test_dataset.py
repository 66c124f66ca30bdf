"""The training-data cache: keyed on the simulator's code, not on its comments."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.dataset import SIM_DIR, simulator_digest


def test_simulator_digest_follows_the_code_not_the_comments(tmp_path: Path) -> None:
    copy = tmp_path / "sim"
    shutil.copytree(SIM_DIR, copy)
    assert simulator_digest(copy) == simulator_digest()
    physics = copy / "physics.py"
    source = physics.read_text()
    physics.write_text("# a new comment\n" + source.replace("\n\n\n", "\n\n\n\n", 1))
    assert simulator_digest(copy) == simulator_digest()  # same code: the cache stays valid
    physics.write_text(source.replace("RING_DECAY_DB = 12.0", "RING_DECAY_DB = 13.0"))
    assert "RING_DECAY_DB = 12.0" in source and simulator_digest(copy) != simulator_digest()
