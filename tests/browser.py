"""A real headless Chromium for the display tests: Selenium with the system chromedriver (Debian
``chromium`` and ``chromium-driver``, installed by scripts/ensure-system-deps.sh; no browser download)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "test-artifacts" / "display"
WAIT_S = 20.0  # generous: the whole bench shares two cores with other work


def wait_until(what: str, condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("headless Chromium and its driver are needed: run scripts/ensure-system-deps.sh")
    return browser, driver


class Page:
    """One Chromium window on the display, with the few reads and clicks the tests need."""

    def __init__(self, url: str, size: tuple[int, int], *extra_args: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = _chromium_paths()
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={size[0]},{size[1]}", "--hide-scrollbars", *extra_args):  # fmt: skip
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.driver.get(url)
        self.received: list[dict[str, Any]] = []

    def read(self) -> dict[str, Any]:
        """What the page shows right now, in one script call (one consistent moment)."""
        return dict(
            self.driver.execute_script(
                """
                const $ = (id) => document.getElementById(id);
                return {
                  seq: $("guidance").dataset.seq, state: $("guidance").dataset.state,
                  instruction: $("instruction").textContent, stale: $("stale-label").textContent,
                  quality: $("quality-meter").dataset.value, drawn: $("drawing").dataset.instruction,
                  available: $("availability").dataset.state, connection: $("connection").dataset.state,
                  response: $("response").textContent, responseState: $("response").dataset.state,
                  gain: $("gain-value").textContent, gainMode: $("gain-mode").textContent,
                };
                """
            )
        )

    def click(self, testid: str) -> None:
        self.driver.find_element("css selector", f'[data-testid="{testid}"]').click()

    def drain(self) -> list[dict[str, Any]]:
        """Every message the page received since the last drain (the page's own record)."""
        batch = self.driver.execute_script(
            "const r = window.sonoguideReceived || []; window.sonoguideReceived = []; return r;"
        )
        self.received.extend(batch)
        return list(batch)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"display-{name}.png"
        self.driver.save_screenshot(str(path))
        if os.environ.get("SONOGUIDE_UPDATE_SCREENSHOTS") == "1":
            shutil.copy(path, ROOT / "docs" / "images" / path.name)
        return path

    def close(self) -> None:
        self.driver.quit()
