"""``sonoguide exam start|end|worklist --device ID [--broker URL]``: the display's exam commands from
a shell (``cmd/exam_start``, ``cmd/exam_end``, ``cmd/worklist``, MQTT 5 request/response).

    sonoguide exam start --device sg-01 --patient-id 123456 --patient-name 'Doe^Jane' --birth-date 19800131
    sonoguide exam worklist --device sg-01 --date 20261202
    sonoguide exam end --device sg-01

The daemon validates the fields (docs/captures.md); its answer is printed as JSON, exit status 1 when
it refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from typing import Any

from service.commands.watch import parse_broker

FIELDS = ("patient_id", "patient_name", "birth_date", "sex", "accession_number", "study_id",
          "study_description", "referring_physician", "study_instance_uid")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST[:PORT] or mqtts://...")
    parser.add_argument("--device", required=True, help="device id")
    parser.add_argument("--username", default="", help="MQTT user; password from $SONOGUIDE_MQTT_PASSWORD")
    parser.add_argument("--timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="open an exam: later captures belong to this patient and study")
    for name in FIELDS:
        start.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    sub.add_parser("end", help='close the open exam (captures go to the "unassigned" study)')
    wl = sub.add_parser("worklist", help="query the device's Modality Worklist")
    wl.add_argument("--patient-id", default="")
    wl.add_argument("--patient-name", default="", help="DICOM wildcards * and ? allowed")
    wl.add_argument("--date", default="", help="scheduled date YYYYMMDD")


def request(host: str, port: int, tls: bool, username: str, device: str, command: str,
            body: dict[str, Any], timeout: float) -> dict[str, Any]:  # fmt: skip
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    # The daemon answers only in the requester's own reply namespace (docs/mqtt.md): with an account,
    # cmd/<name>/<account> and reply/<account>/; on the local listener, cmd/<name> and reply/<client>/.
    requester = username or f"cli-{uuid.uuid4().hex[:8]}"
    reply_topic = f"sonoguide/{device}/reply/{requester}/{command}"
    command_topic = f"sonoguide/{device}/cmd/{command}" + (f"/{username}" if username else "")
    corr, answer, done, subscribed = uuid.uuid4().bytes, {}, threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, os.environ.get("SONOGUIDE_MQTT_PASSWORD", ""))
    if tls:
        client.tls_set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        if getattr(msg.properties, "CorrelationData", b"") == corr:
            answer.update(json.loads(msg.payload))
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply_topic, 1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no connection to the broker at {host}:{port}")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = reply_topic, corr
        client.publish(command_topic, json.dumps(body), qos=1, properties=props)
        if not done.wait(timeout):
            raise TimeoutError(f"device {device!r} did not answer cmd/{command} within {timeout:g} s")
        return answer
    finally:
        client.loop_stop()
        client.disconnect()


def run(args: argparse.Namespace) -> int:
    try:
        host, port, tls = parse_broker(args.broker)
    except ValueError as e:
        print(f"sonoguide exam: {e}", file=sys.stderr)
        return 2
    if args.action == "start":
        command, body = "exam_start", {n: getattr(args, n) for n in FIELDS if getattr(args, n) is not None}
    elif args.action == "end":
        command, body = "exam_end", {}
    else:
        command = "worklist"
        body = {k: v for k, v in (("patient_id", args.patient_id), ("patient_name", args.patient_name),
                                  ("date", args.date)) if v}  # fmt: skip
    try:
        answer = request(host, port, tls, args.username, args.device, command, body, args.timeout)
    except (OSError, TimeoutError) as e:
        print(f"sonoguide exam: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0 if answer.get("ok") else 1
