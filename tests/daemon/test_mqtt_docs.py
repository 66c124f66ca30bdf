"""The topic table is the single source: committed schema files and AsyncAPI equal what it generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from service.mqtt.client import parse_command
from service.mqtt.docs import DEFAULT_OUT, generate
from service.mqtt.topics import COMMANDS, TOPICS
from service.mqtt.validate import unsupported_keywords, validate

ROOT = Path(__file__).resolve().parents[2]


def test_committed_docs_equal_the_table() -> None:
    files = generate()
    for name, text in files.items():
        path = DEFAULT_OUT / name
        assert path.is_file(), f"{path} missing: run python -m service.mqtt.docs"
        assert path.read_text() == text, f"{path} is stale: run python -m service.mqtt.docs"
    committed = {p.name for p in DEFAULT_OUT.glob("*.schema.json")}
    assert committed == {n for n in files if n.endswith(".schema.json")}
    out = subprocess.run(
        [sys.executable, "-m", "service.mqtt.docs", "--check"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_schemas_are_valid_and_only_use_supported_keywords() -> None:
    for name, text in generate().items():
        if name.endswith(".json"):
            doc = json.loads(text)
            jsonschema.Draft202012Validator.check_schema(doc)
    for t in TOPICS:
        assert unsupported_keywords(t.schema) == [], t.name
        if t.response_schema:
            assert unsupported_keywords(t.response_schema) == [], t.name
    assert set(COMMANDS) == {
        "set_auto",
        "set_param",
        "preset",
        "freeze",
        "capture",
        "calibrate_camera",
        "install_model",
        "activate_model",
        "rollback_model",
        "ping",
        "step_param",
        "exam_start",
        "exam_end",
        "worklist",
    }


SAMPLES = [
    ("set_param", {"param": "gain_db", "value": 40}),
    ("set_param", {"param": "gain_db", "value": "40"}),
    ("set_param", {"param": "volume", "value": 4}),
    ("set_param", {"param": "gain_db"}),
    ("set_param", {"param": "gain_db", "value": 1, "extra": True}),
    ("set_auto", {"param": "gain", "enabled": 1}),
    ("set_auto", {"param": "gain", "enabled": False}),
    ("preset", {"name": ""}),
    ("preset", {"name": "abdomen"}),
    ("ping", {}),
    ("ping", []),
    ("install_model", {}),
    ("install_model", {"path": 3}),
    ("install_model", {"path": "/tmp/x.sgb", "activate": True}),
    ("activate_model", {"version": "1.5.0", "force": "yes"}),
    ("rollback_model", {}),
]


@pytest.mark.parametrize(("name", "request_body"), SAMPLES)
def test_small_validator_agrees_with_jsonschema(name, request_body) -> None:
    schema = COMMANDS[name].schema
    ours = validate(request_body, schema)
    theirs = list(jsonschema.Draft202012Validator(schema).iter_errors(request_body))
    assert bool(ours) == bool(theirs), (ours, [e.message for e in theirs])


def test_parse_command_names_the_problem() -> None:
    assert str(parse_command("fly", b"{}")[0]).startswith("unknown command 'fly'")
    assert "not UTF-8 JSON" in str(parse_command("ping", b"\xff{")[0])
    problem = str(parse_command("set_param", b'{"param": "gain_db", "value": "loud"}')[0])
    assert "value" in problem and "expected number" in problem
    assert parse_command("ping", b"") == (None, {})


NODE_TOOLING = ROOT / "scripts" / "node"


def asyncapi_diagnostics(document: Path) -> tuple[int, list[dict[str, object]]]:
    """The real AsyncAPI parser (@asyncapi/parser, pinned in scripts/node/package-lock.json) on a file."""
    assert (NODE_TOOLING / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "the npm dev tooling is not installed: run scripts/ensure-system-deps.sh (make sysdeps)"
    )
    out = subprocess.run(
        ["node", str(NODE_TOOLING / "validate-asyncapi.mjs"), str(document)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode in (0, 2), out.stderr
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_the_real_asyncapi_parser_reports_no_error_and_no_warning() -> None:
    rc, diagnostics = asyncapi_diagnostics(DEFAULT_OUT / "asyncapi.yaml")
    serious = [d for d in diagnostics if d["severity"] in ("error", "warning")]
    assert rc == 0 and serious == [], json.dumps(serious, indent=1)[:4000]


def test_the_parser_check_fails_on_qos_in_a_message_binding(tmp_path: Path) -> None:
    """The check can fail: the bug it guards against (QoS in message bindings) is reported as errors."""
    for name, text in generate().items():
        (tmp_path / name).write_text(text)
    doc = tmp_path / "asyncapi.yaml"
    broken = doc.read_text().replace(
        '        payload:\n          "$ref": "./guidance.schema.json"\n',
        '        payload:\n          "$ref": "./guidance.schema.json"\n'
        "        bindings:\n          mqtt:\n            qos: 0\n",
    )
    assert broken != doc.read_text()
    doc.write_text(broken)
    rc, diagnostics = asyncapi_diagnostics(doc)
    errors = [d for d in diagnostics if d["severity"] == "error"]
    assert rc == 2 and any("guidance" in d["path"] for d in errors), diagnostics
