"""The reference handheld display: a static web app (no build step) in ``static/``.

It talks to the broker over MQTT 5 WebSockets with the vendored MQTT.js browser bundle
(``static/vendor/mqtt.min.js``, the exact file of the ``mqtt`` version pinned in
scripts/node/package-lock.json). Any web server can serve the folder; ``sonoguide display`` serves it
for development and the demo. See docs/display.md.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDORED_MQTT_JS = STATIC_DIR / "vendor" / "mqtt.min.js"
