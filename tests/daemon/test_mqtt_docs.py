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
        "reload_model",
        "ping",
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
    ("reload_model", {}),
    ("reload_model", {"dir": 3}),
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
