"""Generate docs/mqtt/*.schema.json and docs/mqtt/asyncapi.yaml from the topic table.

python -m service.mqtt.docs            # (re)write docs/mqtt/
python -m service.mqtt.docs --check    # exit 1 if the committed files differ from the table
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from service import __version__
from service.mqtt.topics import REPLY_ROOT, ROOT, TOPICS, Topic

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "mqtt"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.1.0"
MQTT_BINDING_VERSION = "0.2.0"


def schema_files() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, one per payload (commands: request and response)."""
    out: dict[str, dict[str, Any]] = {}
    for t in TOPICS:
        out[f"{t.file_stem}.schema.json"] = _document(t, t.schema, t.description)
        if t.response_schema is not None:
            out[f"{t.file_stem}.response.schema.json"] = _document(
                t, t.response_schema, f"Response to {t.name} (sent to the request's response topic)."
            )
    return out


def _document(t: Topic, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"{ROOT}/<device_id>/{t.name}",
        "description": description,
        **schema,
    }


# The shipped broker's listeners (systemd/mosquitto/sonoguide-local.conf; a test keeps them equal).
SERVERS: dict[str, dict[str, Any]] = {
    "device": {
        "host": "127.0.0.1:1883",
        "protocol": "mqtt",
        "description": "On the device only: the daemon's own listener, anonymous.",
    },
    "device-websocket": {
        "host": "127.0.0.1:9001",
        "protocol": "ws",
        "description": "On the device only (or its dedicated display link): MQTT over WebSockets, "
        "anonymous; a display running on the device, and `sonoguide display` in development.",
    },
    "display": {
        "host": "{device_host}:8883",
        "protocol": "secure-mqtt",
        "description": "The handheld display over the clinic network: TLS, a password per display, "
        "the display ACL (read guidance, status, available, settings, events and its own replies under "
        "reply/<username>/; write commands only as cmd/<name>/<username>).",
    },
    "display-websocket": {
        "host": "{device_host}:8884",
        "protocol": "wss",
        "description": "As `display`, over secure WebSockets, for browser displays.",
    },
}
_DEVICE_HOST = {"device_host": {"description": "the device's address on the clinic network"}}


def _servers() -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for name, server in SERVERS.items():
        entry = {**server, "protocolVersion": "5"}
        if "{device_host}" in server["host"]:
            entry["variables"] = _DEVICE_HOST
            entry["security"] = [{"$ref": "#/components/securitySchemes/display-password"}]
        servers[name] = entry
    return servers


def _operation_binding(t: Topic) -> dict[str, Any]:
    """QoS, retain and expiry of the topic: MQTT binding 0.2.0 allows them on operations only."""
    binding: dict[str, Any] = {"qos": t.qos, "retain": t.retain}
    if t.expiry_s is not None:
        binding["messageExpiryInterval"] = t.expiry_s
    binding["bindingVersion"] = MQTT_BINDING_VERSION
    return binding


_COMMAND_TRUST = (
    " Published here by the device's own clients; an account behind the display ACL (or the site "
    "bridge, as `site`) publishes on this topic followed by /<its username>. Retained requests are "
    "refused and cleared."
)


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for t in TOPICS:
        key = t.file_stem
        message: dict[str, Any] = {
            "name": key,
            "contentType": "text/plain" if t.name == "available" else "application/json",
            "payload": {"$ref": f"./{t.file_stem}.schema.json"},
        }
        if t.is_command:
            message["correlationId"] = {"location": "$message.header#/correlationData"}
        channels[key] = {
            "address": f"{ROOT}/{{device_id}}/{t.name}",
            "description": t.description + (_COMMAND_TRUST if t.is_command else ""),
            "parameters": {"device_id": {"description": "[device] id from the config"}},
            "messages": {key: message},
        }
        op: dict[str, Any] = {
            "action": "send" if t.direction == "publish" else "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": t.description,
            "bindings": {"mqtt": _operation_binding(t)},
        }
        if t.response_schema is not None:
            reply_key = f"{key}-response"
            channels[reply_key] = {
                "address": None,
                "description": f"The response topic named in the {t.name} request: under "
                f"{ROOT}/{{device_id}}/{REPLY_ROOT}/<client>/ for a request on {t.name}/<client>, else "
                f"under {ROOT}/{{device_id}}/{REPLY_ROOT}/; elsewhere the request is refused unanswered.",
                "messages": {
                    reply_key: {
                        "name": reply_key,
                        "contentType": "application/json",
                        "payload": {"$ref": f"./{t.file_stem}.response.schema.json"},
                        "correlationId": {"location": "$message.header#/correlationData"},
                    }
                },
            }
            op["reply"] = {
                "address": {"location": "$message.header#/responseTopic"},
                "channel": {"$ref": f"#/channels/{reply_key}"},
            }
        operations[key] = op
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "sonoguide MQTT API",
            "version": __version__,
            "description": "Generated by `python -m service.mqtt.docs` from service/mqtt/topics.py. Do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "securitySchemes": {
                "display-password": {
                    "type": "userPassword",
                    "description": "A display's account in the broker's password file "
                    "(mosquitto_passwd /etc/mosquitto/sonoguide/passwd <name>).",
                }
            }
        },
    }


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; strings are JSON-quoted (valid YAML) unless plain."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            key = k if _PLAIN.match(k) else json.dumps(k)
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        return "\n".join(
            f"{pad}-\n{to_yaml(v, indent + 1)}"
            if isinstance(v, (dict, list)) and v
            else f"{pad}- {to_yaml(v)}"
            for v in value
        )
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    reserved = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
    return text if _PLAIN.match(text) and text.lower() not in reserved else json.dumps(text)


def generate() -> dict[str, str]:
    """File name -> exact file content."""
    files = {
        name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in schema_files().items()
    }
    files["asyncapi.yaml"] = (
        "# Generated from service/mqtt/topics.py by `python -m service.mqtt.docs`.\n"
        + to_yaml(asyncapi())
        + "\n"
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.mqtt.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    files = generate()
    stale = [
        n for n, text in files.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text
    ]
    orphans = (
        sorted(p.name for p in args.out.glob("*.schema.json") if p.name not in files)
        if args.out.is_dir()
        else []
    )
    if args.check:
        for n in stale:
            print(f"out of date: {args.out / n}", file=sys.stderr)
        for n in orphans:
            print(f"not in the table: {args.out / n}", file=sys.stderr)
        return 1 if stale or orphans else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for n in stale:
        tmp = args.out / f".{n}.tmp"
        tmp.write_text(files[n])
        tmp.replace(args.out / n)  # atomic: a reader never sees half a schema
    for n in orphans:
        (args.out / n).unlink()
    print(f"{len(stale)} file(s) written, {len(orphans)} removed in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
