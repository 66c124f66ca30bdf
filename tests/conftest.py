"""Shared fixtures: a real mosquitto broker, extra brokers with custom configs, pty pairs, and a real
Orthanc PACS (with its worklist plugin) on free loopback ports.

Later test modules reuse these; nothing here is mocked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from firmware_bridge.ptyport import PtyPair
from service.tools.local_broker import DEFAULT_CONFIG, LocalBroker
from service.tools.local_pacs import LocalPacs

# Property tests draw the same examples on every run (`make test` must not pass or fail by the dice);
# `HYPOTHESIS_PROFILE=explore` draws fresh ones, which is how a counterexample is found and added.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

# Brokers and PACS started for the running test, so their logs can be attached when it fails.
_brokers_in_test: list[LocalBroker] = []
_pacs_in_test: list[LocalPacs] = []


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One real broker for the whole session: anonymous, on a free loopback port."""
    broker = LocalBroker(workdir=tmp_path_factory.mktemp("mosquitto"), name="session-broker").start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def ws_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real broker with an MQTT listener and a WebSocket listener (``ws_url``) for browser clients."""
    broker = LocalBroker(
        workdir=tmp_path_factory.mktemp("ws-mosquitto"), name="ws-broker", websocket=True
    ).start()
    yield broker
    broker.close()


@pytest.fixture
def ws_broker(ws_mosquitto: LocalBroker) -> Iterator[LocalBroker]:
    """The WebSocket-enabled session broker, its log attached to the report if the test fails."""
    if not ws_mosquitto.running:
        ws_mosquitto.start()
    _brokers_in_test.append(ws_mosquitto)
    yield ws_mosquitto
    _brokers_in_test.remove(ws_mosquitto)


@pytest.fixture
def broker(mosquitto: LocalBroker) -> Iterator[LocalBroker]:
    """The session broker, with its log attached to this test's report if the test fails."""
    if not mosquitto.running:  # a previous test may have stopped it to test reconnection
        mosquitto.start()
    _brokers_in_test.append(mosquitto)
    yield mosquitto
    _brokers_in_test.remove(mosquitto)


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., LocalBroker]]:
    """Factory for extra brokers: ``start_broker(config=..., name=..., websocket=...)``; config may use
    {port} and {dir}."""
    started: list[LocalBroker] = []

    def _start(
        config: str = DEFAULT_CONFIG,
        name: str = "extra",
        port: int | None = None,
        start: bool = True,
        websocket: bool = False,
    ) -> LocalBroker:
        b = LocalBroker(
            config=config,
            port=port,
            workdir=tmp_path / f"broker-{name}-{len(started)}",
            name=name,
            websocket=websocket,
        )
        started.append(b)
        _brokers_in_test.append(b)
        return b.start() if start else b

    yield _start
    for b in started:
        b.close()
        _brokers_in_test.remove(b)


@pytest.fixture(scope="session")
def orthanc_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPacs]:
    """One real Orthanc for the session (DICOM and HTTP on free loopback ports, generated config)."""
    pacs = LocalPacs(workdir=tmp_path_factory.mktemp("orthanc"), name="session-pacs").start()
    yield pacs
    pacs.close()


@pytest.fixture
def orthanc(orthanc_session: LocalPacs) -> Iterator[LocalPacs]:
    """The session Orthanc, running, with its log attached to this test's report if the test fails.
    Tests tell their instances apart by patient or study (nothing is deleted between tests)."""
    if not orthanc_session.running:  # a previous test may have stopped it to test an outage
        orthanc_session.start()
    _pacs_in_test.append(orthanc_session)
    yield orthanc_session
    _pacs_in_test.remove(orthanc_session)


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    """A pseudo-terminal: ``.device_fd`` plays the probe, ``.host_path`` is opened with pyserial."""
    pair = PtyPair()
    yield pair
    pair.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in _brokers_in_test:
            report.sections.append((f"mosquitto log ({b.name}, port {b.port})", b.log_text()[-8000:]))
        for p in _pacs_in_test:
            report.sections.append((f"orthanc log ({p.name}, DICOM {p.dicom_port})", p.log_text()[-8000:]))
