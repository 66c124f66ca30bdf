"""Why a configured probe port is missing, on the real filesystem (firmware_bridge.portnames)."""

from __future__ import annotations

import os
from pathlib import Path

from firmware_bridge.portnames import STABLE_NAME, missing_port_reason, renumbered_name
from firmware_bridge.ptyport import PtyPair


def test_each_kind_of_missing_port_is_named_with_what_to_use_instead(tmp_path: Path) -> None:
    with PtyPair() as pty:
        assert missing_port_reason(pty.host_path) == ""  # there: nothing to say
        assert renumbered_name(pty.host_path)
        link = tmp_path / "probe"
        link.symlink_to(pty.host_path)
        assert missing_port_reason(str(link)) == "" and not renumbered_name(str(link))
        gone = pty.host_path
    assert not os.path.exists(gone)
    dangling = missing_port_reason(str(link))
    assert f"points to {gone}" in dangling and "its device is gone" in dangling
    pts = missing_port_reason(gone)
    assert "pseudo-terminal" in pts and "stable link path" in pts
    acm = "/dev/ttyACM987"
    assert not os.path.exists(acm) and STABLE_NAME in missing_port_reason(acm)
    assert missing_port_reason(str(tmp_path / "nothing")).endswith("does not exist")
    assert missing_port_reason("socket://127.0.0.1:9") == ""
    assert not renumbered_name(STABLE_NAME) and renumbered_name("/dev/ttyUSB0")
