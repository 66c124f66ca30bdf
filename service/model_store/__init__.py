"""Field model updates: signed bundles, the trusted keys, and the versioned store on the device.

Pure file logic (no daemon, no threads, no MQTT): ``keys`` (Ed25519 key pairs, trusted keys and the
revocation list), ``bundle`` (pack and the streaming verify-and-extract of a bundle), ``compat`` (the
model contract the service can run), ``golden`` (reference inputs with FP32/INT8 outputs and
tolerances), ``store`` (install, activate, rollback, remove, list; atomic on disk). The daemon and
the ``sonoguide model`` command sit on top (docs/model-updates.md).
"""

from __future__ import annotations


class ModelStoreError(Exception):
    """A bundle, key or store operation refused; the message names the problem."""
