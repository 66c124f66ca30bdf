"""A real Orthanc PACS on free loopback ports, for the demo and the tests (Debian package ``orthanc``).

The config is generated in a private folder: DICOM and HTTP ports picked free, storage in the folder,
the HTTP API reachable from this machine only, and the Modality Worklists plugin serving ``*.wl``
files from ``<dir>/worklist`` when the package ships it. What arrived is read back through the REST
API (``instances()``, ``tags()``), never by looking into Orthanc's storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from service.tools.local_broker import free_port, wait_for_port

log = logging.getLogger(__name__)

WORKLIST_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


class PacsError(RuntimeError):
    pass


def find_orthanc() -> str:
    """Path of the Orthanc binary (Debian installs it as /usr/sbin/Orthanc)."""
    found = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise PacsError("Orthanc is not installed (Debian/Ubuntu: apt-get install orthanc)")
    return found


def find_worklist_plugin() -> str | None:
    for folder in WORKLIST_PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libModalityWorklists.so*")):
            return str(path)
    return None


class LocalPacs:
    """One Orthanc process. ``start()``/``stop()`` may be repeated; ports and stored images stay."""

    def __init__(
        self, workdir: Path | None = None, aet: str = "TESTPACS", name: str = "pacs", **extra: Any
    ) -> None:
        self.name, self.aet = name, aet
        self.dicom_port, self.http_port = free_port(), free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"sonoguide-{name}-"))
        self.worklist_dir = self.dir / "worklist"
        self.worklist_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        plugin = find_worklist_plugin()
        config: dict[str, Any] = {
            "Name": name,
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "DicomCheckCalledAet": True,  # a wrong called AE title is refused, as hospitals configure it
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFindWorklist": True,  # any modality may ask the worklist
            "DefaultEncoding": "Utf8",
            "Plugins": [plugin] if plugin else [],
            "Worklists": {"Enable": bool(plugin), "Database": str(self.worklist_dir)},
            "StorageCompression": False,
            "SaveJobs": False,
        }
        config.update(extra)
        self.worklist_served = bool(plugin)
        self.config_path = self.dir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> LocalPacs:
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [find_orthanc(), f"--logdir={self.log_dir}", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PacsError(f"Orthanc ({self.name}) exited at start:\n{self.log_text()[-4000:]}")
            if wait_for_port(self.dicom_port, timeout=0.1) and self._rest_ready():
                log.debug("orthanc %s: DICOM %d, HTTP %d", self.name, self.dicom_port, self.http_port)
                return self
        self.stop()
        raise PacsError(
            f"Orthanc ({self.name}) did not listen within {timeout} s:\n{self.log_text()[-4000:]}"
        )

    def _rest_ready(self) -> bool:
        try:
            self.get("/system")
            return True
        except (OSError, PacsError):
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- REST API ---------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            raise PacsError(f"GET {path}: HTTP {e.code}") from None

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as e:
            raise PacsError(f"POST {path}: HTTP {e.code}") from None

    def find(self, query: dict[str, str], level: str = "Instance") -> list[dict[str, Any]]:
        """Stored instances (or studies...) whose main tags match ``query``, each with its tags."""
        found = self.post("/tools/find", {"Level": level, "Query": query, "Expand": True})
        return [dict(item) for item in found]

    def register_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Tell Orthanc where a modality listens (it sends Storage Commitment reports there)."""
        request = urllib.request.Request(
            f"{self.url}/modalities/{name}",
            data=json.dumps({"AET": aet, "Host": host, "Port": port}).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self.get("/instances"))

    def tags(self, instance: str) -> dict[str, Any]:
        """An instance's main tags by keyword (``/instances/<id>/simplified-tags``)."""
        return dict(self.get(f"/instances/{instance}/simplified-tags"))

    def sop_instance_uids(self) -> list[str]:
        return [self.tags(i)["SOPInstanceUID"] for i in self.instances()]

    def statistics(self) -> dict[str, Any]:
        return dict(self.get("/statistics"))

    def log_text(self) -> str:
        texts = []
        for path in sorted(self.log_dir.glob("*")):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalPacs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
