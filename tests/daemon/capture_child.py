"""The daemon as a child process for the kill test: the reference emulator on a pty, the real link,
the real pipeline, MQTT and capture store, capturing the newest frame every ``--every`` seconds until
it is killed (the disk-full test runs it on a small tmpfs of its own). ``--drain``: capture nothing,
send what is queued, exit when the outbox is empty.

    python -m tests.daemon.capture_child --broker-port P --pacs-port Q --pacs-aet AE --dir D
"""

from __future__ import annotations

import argparse
import sys
import time

from service.daemon.app import Daemon
from service.daemon.captures import CaptureService
from service.daemon.config import parse_config
from service.daemon.inference import HeuristicModel
from tests.service_bench import EmulatedProbe


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--pacs-port", type=int, required=True)
    parser.add_argument("--pacs-aet", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--patient", required=True)
    parser.add_argument("--device-id", default="kill-test")
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()
    config = parse_config(
        {
            "device": {"id": args.device_id},
            "mqtt": {"port": args.broker_port},
            "captures": {"dir": args.dir, "retention_days": 1.0},
            "pacs": {"host": "127.0.0.1", "port": args.pacs_port, "called_ae": args.pacs_aet,
                     "timeout_s": 5.0, "retry_initial_s": 0.1, "retry_max_s": 0.5},
        },
        "<kill-test>",
        env={},
    )  # fmt: skip
    captures = CaptureService(config.captures, config.pacs, config.device.id, event=lambda *a, **k: None)
    if not captures.exams.open:
        captures.exams.start({"patient_id": args.patient, "patient_name": "Kill^Test"})
    probe = EmulatedProbe()
    daemon = Daemon(config, probe.link, HeuristicModel(), captures=captures).start()
    print("started", flush=True)
    try:
        while True:
            if args.drain:
                if not captures.store.pending():
                    return 0
            else:
                daemon.pipeline.capture_latest("manual", "kill test")
            time.sleep(args.every)
    finally:
        daemon.stop()
        probe.close()


if __name__ == "__main__":
    sys.exit(main())
