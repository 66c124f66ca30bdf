"""Probe firmware bridge: wire protocol, host link, reference probe emulator, probe CLI."""
