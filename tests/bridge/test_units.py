"""Pure parts of the bridge: parameter rules, reassembly, time sync, placeholder images, pose stream."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest

from firmware_bridge import messages as m
from firmware_bridge.assembly import FrameAssembler
from firmware_bridge.emulator import Capabilities, PatternImageSource, Pose, StreamPoseSource
from firmware_bridge.emulator.state import apply_param, default_params
from firmware_bridge.timesync import SyncSample, TimeSync


def test_parameter_rules() -> None:
    caps = Capabilities()
    p = default_params(caps)
    assert apply_param(p, caps, m.PARAM_GAIN, 0, 42.3) == 42.5 and p.gain_db == 42.5  # snapped to 0.5 dB
    assert apply_param(p, caps, m.PARAM_GAIN, 0, 90.5) == m.ERR_OUT_OF_RANGE and p.gain_db == 42.5
    assert apply_param(p, caps, m.PARAM_GAIN, 0, math.inf) == m.ERR_OUT_OF_RANGE
    assert apply_param(p, caps, m.PARAM_DEPTH, 0, 160.0001) == 160.0
    assert apply_param(p, caps, m.PARAM_DEPTH, 0, 150.0) == m.ERR_OUT_OF_RANGE and p.depth_mm == 160.0
    assert apply_param(p, caps, m.PARAM_TGC, 4, 0.0) == m.ERR_OUT_OF_RANGE
    assert apply_param(p, caps, 99, 0, 0.0) == m.ERR_UNKNOWN_PARAM
    assert apply_param(p, caps, m.PARAM_FROZEN, 0, 1.0) == 1.0
    assert apply_param(p, caps, m.PARAM_FREQ, 0, 5.0) == m.ERR_FROZEN
    assert apply_param(p, caps, m.PARAM_FROZEN, 0, 0.0) == 0.0


def _frame(fid: int, w: int = 64, h: int = 96) -> tuple[dict, list[bytes]]:
    data = (np.arange(w * h) % 251).astype(np.uint8).tobytes()
    count = -(-len(data) // 4096)
    head = {
        "frame_id": fid,
        "device_ts_us": 10 * fid,
        "width": w,
        "height": h,
        "chunk_count": count,
        "flags": m.FLAG_CONTACT,
        "gain_db": 40.0,
        "depth_mm": 80.0,
        "freq_mhz": 3.5,
        "tgc_db": [0.0],
    }
    chunks = [
        m.encode_payload(
            m.FRAME_CHUNK,
            {
                "frame_id": fid,
                "chunk_index": i,
                "chunk_count": count,
                "data": data[i * 4096 : (i + 1) * 4096],
            },
        )
        for i in range(count)
    ]
    return head, chunks


def test_reassembly_out_of_order_duplicates_and_loss() -> None:
    a = FrameAssembler(timeout_s=0.5)
    head, chunks = _frame(1)
    a.header(head, 0.0)
    assert a.chunk(chunks[1], 0.01) is None
    assert a.chunk(chunks[1], 0.01) is None  # duplicate rejected
    f = a.chunk(chunks[0], 0.02)
    assert f is not None and f.image.shape == (96, 64) and f.image[0, 5] == 5 and f.host_time == 0.02
    assert a.stats.chunks_rejected == 1 and a.stats.frames_lost == 0
    head3, chunks3 = _frame(3)  # frame 2 never seen at all
    a.header(head3, 0.1)
    a.chunk(chunks3[0], 0.1)  # chunk 1 never comes
    a.expire(0.7)
    assert a.stats.frames_lost == 2 and a.stats.frames_incomplete == 1
    for fid in range(4, 10):  # headers without chunks: never more than two frames held
        a.header(_frame(fid)[0], 1.0)
        assert len(a._pending) <= 2
    bogus = dict(head, frame_id=20, width=4096, height=4096)  # 16 MiB announced: refused
    a.header(bogus, 1.0)
    assert a.stats.headers_rejected == 1


def test_time_sync_picks_the_tightest_exchange() -> None:
    ts = TimeSync()
    with pytest.raises(ValueError, match="no time sync"):
        ts.to_host(0)
    ts.add(SyncSample(100.0, 100.010, 5_000_000))  # slow round trip
    ts.add(SyncSample(101.0, 101.0002, 6_000_000))  # device 6.0 s <-> host 101.0001 s
    assert ts.to_host(6_500_000) == pytest.approx(101.5001)
    ts.reset()
    assert not ts.synced


def test_pattern_image_responds_to_gain_depth_and_contact() -> None:
    src = PatternImageSource(128, 128, seed=1)
    on = Pose((0.0, 0.0, 0.0))
    base = {"gain_db": 50.0, "depth_mm": 100.0, "freq_mhz": 3.5, "tgc_db": [0.0] * 4}
    dim = src.render(dict(base, gain_db=40.0), on, 0.0).astype(float)
    bright = src.render(dict(base, gain_db=60.0), on, 0.0).astype(float)
    assert bright.mean() > 2.5 * dim.mean()
    assert (src.render(dict(base, gain_db=90.0), on, 0.0) == 255).mean() > 0.3
    shallow = src.render(dict(base, depth_mm=40.0), on, 0.0)
    deep = src.render(dict(base, depth_mm=200.0), on, 0.0)
    assert shallow.shape == deep.shape == (128, 128) and not np.array_equal(shallow, deep)
    assert not src.render(base, Pose((0.0, 0.0, -20.0)), 0.0).any()  # lifted: no tissue
    moved = src.render(base, Pose((30.0, 0.0, 0.0)), 0.0)
    assert not np.array_equal(moved, src.render(base, on, 0.0))  # sliding pans the view


def test_pose_stream_keeps_the_latest_good_line() -> None:
    lines = '{"position_mm": [1, 2, 0], "quaternion": [1, 0, 0, 0]}\nnot json\n{"position_mm": [5, 6, -30]}\n'
    src = StreamPoseSource(io.StringIO(lines))
    deadline = time.monotonic() + 2
    while src.pose_at(0).position_mm != (5.0, 6.0, -30.0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src.pose_at(0).position_mm == (5.0, 6.0, -30.0) and not src.pose_at(0).in_contact
    assert src.rejected == 1
