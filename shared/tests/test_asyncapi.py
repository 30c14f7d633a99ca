"""The AsyncAPI document: committed copy up to date, every command and event in it, refs sound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from berth_shared.asyncapi import build_document, main, render, to_yaml
from berth_shared.bus.envelope import event_subject, event_type
from berth_shared.messages import provisioner, watcher

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
REGENERATE = "regenerate it: .venv/bin/python -m berth_shared.asyncapi > docs/asyncapi.yaml"


def test_committed_document_is_fresh() -> None:
    assert DOC.exists(), f"docs/asyncapi.yaml is missing; {REGENERATE}"
    assert DOC.read_text() == render(), f"docs/asyncapi.yaml is out of date with the message models; {REGENERATE}"


def test_every_command_is_a_request_reply_operation() -> None:
    doc = build_document()
    by_address = {ch["address"]: key for key, ch in doc["channels"].items() if ch["address"]}
    for subject, (request, reply) in (provisioner.COMMANDS | watcher.COMMANDS).items():
        assert subject in by_address, subject
        key = by_address[subject]
        op = doc["operations"][key]
        assert op["action"] == "receive"
        assert op["channel"] == {"$ref": f"#/channels/{key}"}
        messages = doc["components"]["messages"]
        assert messages[f"{key}Request"]["payload"] == {"$ref": f"#/components/schemas/{request.__name__}"}
        assert messages[f"{key}Reply"]["payload"] == {"$ref": f"#/components/schemas/{reply.__name__}"}
        assert "Authorization" in messages[f"{key}Request"]["headers"]["properties"]
        reply_refs = [m["$ref"] for m in op["reply"]["messages"]]
        assert reply_refs[-1].endswith("/messages/error")


def test_every_event_is_a_cloudevent_on_its_tenant_subject() -> None:
    doc = build_document()
    channels = {ch["address"]: ch for ch in doc["channels"].values() if ch["address"]}
    schemas = doc["components"]["schemas"]
    for (noun, verb), payload in (provisioner.EVENTS | watcher.EVENTS).items():
        address = "berth.events.{tenant}." + f"{noun}.{verb}"
        assert address in channels, address
        # The documented address is the one the code publishes to, tenant filled in.
        assert event_subject("demo", noun, verb) == address.replace("{tenant}", "demo")
        message_ref = channels[address]["messages"]["event"]["$ref"]
        message = doc["components"]["messages"][message_ref.rsplit("/", 1)[1]]
        assert message["title"] == event_type(noun, verb)
        assert message["headers"]["required"] == ["Nats-Msg-Id"]
        schema = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        envelope, specific = schema["allOf"]
        assert envelope == {"$ref": "#/components/schemas/CloudEvent"}
        assert specific["properties"]["type"] == {"const": event_type(noun, verb)}
        assert specific["properties"]["data"] == {"$ref": f"#/components/schemas/{payload.__name__}"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves() -> None:
    doc = build_document()
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
            node = node[part]


def test_problem_codes_cover_the_error_model() -> None:
    problem = build_document()["components"]["schemas"]["Problem"]
    assert {"invalid_argument", "not_found", "already_exists", "resource_exhausted", "aborted"} <= set(
        problem["properties"]["code"]["enum"]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain.subject-name", "plain.subject-name"),
        ("yes", '"yes"'),
        ("Null", '"Null"'),
        ("3.0.0", '"3.0.0"'),
        ("a: b", '"a: b"'),
        ("#/components/schemas/X", '"#/components/schemas/X"'),
        ("berth.events.{tenant}.volume.created", '"berth.events.{tenant}.volume.created"'),
        ("", '""'),
        (None, "null"),
        (True, "true"),
        (1.5, "1.5"),
        ([], "[]"),
        ({}, "{}"),
    ],
)
def test_yaml_scalars_are_unambiguous(value: Any, expected: str) -> None:
    assert to_yaml({"k": value}) == f"k: {expected}\n"


def test_yaml_nesting_and_text_blocks() -> None:
    text = to_yaml({"a": [{"b": 1, "c": [1, 2]}, "x"], "d": "two\nlines"})
    assert text == "a:\n  - b: 1\n    c:\n      - 1\n      - 2\n  - x\nd: |-\n  two\n  lines\n"


def test_yaml_round_trips_where_a_parser_exists() -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(render()) == build_document()


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == build_document()
