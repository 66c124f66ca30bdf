"""A small static web server for the reference display (``service/display/static``): development, the
demo and the browser tests. A device may serve the folder with any web server instead.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from service.display import STATIC_DIR

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a reloaded page gets the current app
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("display http: " + format, *args)


class DisplayServer:
    """Serves ``directory`` on ``host:port`` (port 0: a free one) from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, directory: Path = STATIC_DIR) -> None:
        if not (directory / "index.html").is_file():
            raise FileNotFoundError(f"no display app in {directory} (index.html missing)")
        self._server = ThreadingHTTPServer((host, port), partial(_Handler, directory=str(directory)))
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="display-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def page_url(self, broker: str, device: str, **extra: str) -> str:
        """The display's address with its broker and device filled in."""
        return self.url + "?" + urlencode({"broker": broker, "device": device, **extra})

    def start(self) -> DisplayServer:
        self._thread.start()
        log.info("display served at %s", self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DisplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
