"""Reference probe emulator: the device side of the protocol, with an image seam and fault injection."""

from firmware_bridge.emulator.device import Faults, ProbeEmulator
from firmware_bridge.emulator.endpoints import PtyEndpoint
from firmware_bridge.emulator.framecache import FrameCache
from firmware_bridge.emulator.images import ImageSource, PatternImageSource, SimImageSource
from firmware_bridge.emulator.poses import (
    CallablePoseSource,
    Pose,
    PoseSource,
    ScriptedPath,
    StreamPoseSource,
)
from firmware_bridge.emulator.state import Capabilities

__all__ = [
    "CallablePoseSource",
    "Capabilities",
    "Faults",
    "FrameCache",
    "ImageSource",
    "PatternImageSource",
    "Pose",
    "PoseSource",
    "ProbeEmulator",
    "PtyEndpoint",
    "ScriptedPath",
    "SimImageSource",
    "StreamPoseSource",
]
