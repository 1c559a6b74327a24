"""docs/PROTOCOL.md is checked, not trusted.

The document's JSON Schemas (```json schema=NAME) and examples (```json example=NAME) are
extracted here. Static checks: every schema is a valid draft 2020-12 schema, every example
validates, every frame type of contract v1 has a schema in each direction it travels, the
tables of close codes, error codes and limits match the contract and relay/config.py.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import orjson
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from relay.cli import build_parser, config_from
from relay.config import RelayConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
ID_PREFIX = "urn:relay:v1:"

# Contract v1 (/work/shared/protocol.md): the frame types in each direction.
CLIENT_TYPES = {
    "auth", "message", "receipt", "status", "presence", "typing", "conversations", "history",
    "group_create", "group_add", "group_remove", "group_leave", "ping",
}  # fmt: skip
SERVER_TYPES = {
    "auth_ok", "error", "message", "receipt", "status", "presence", "typing", "conversations",
    "history", "group", "pong",
}  # fmt: skip
ERROR_CODES = {
    "bad_json", "bad_frame", "invalid", "unknown_type", "unauthenticated", "auth_failed",
    "forbidden", "rate_limited", "not_found", "internal",
}  # fmt: skip
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013}

_BLOCK = re.compile(r"^```json (schema|example)=(\S+)\n(.*?)^```\s*$", re.M | re.S)


class ProtocolDoc:
    """The schemas and examples of docs/PROTOCOL.md, with a validator per frame."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.schemas: dict[str, dict[str, Any]] = {}
        self.examples: list[tuple[str, dict[str, Any]]] = []
        for kind, name, body in _BLOCK.findall(text):
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"```json {kind}={name} is not JSON: {exc}") from exc
            if kind == "schema":
                assert name not in self.schemas, f"two schemas named {name}"
                self.schemas[name] = value
            else:
                self.examples.append((name, value))
        resources = [
            (s["$id"], Resource.from_contents(s, default_specification=DRAFT202012))
            for s in self.schemas.values()
            if "$id" in s
        ]
        self.registry: Registry[Any] = Registry().with_resources(resources)

    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(self.schemas[name], registry=self.registry)

    def errors(self, name: str, frame: Any) -> list[str]:
        return [e.message for e in self.validator(name).iter_errors(frame)]

    def check(self, direction: str, frame: dict[str, Any]) -> None:
        """Assert `frame` (sent in `direction`, "client" or "server") matches its schema."""
        name = f"{direction}/{frame.get('type')}"
        assert name in self.schemas, f"no schema {name} for {frame!r}"
        errors = self.errors(name, frame)
        assert not errors, f"{name} does not match docs/PROTOCOL.md: {errors}\n{frame!r}"

    def table_rows(self, heading: str) -> Iterator[list[str]]:
        """Cells of the first table after `heading`."""
        lines = self.text[self.text.index(heading) :].splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            yield [cell.strip() for cell in line.strip("|").split("|")]


DOC_TEXT = DOC.read_text(encoding="utf-8")
doc = ProtocolDoc(DOC_TEXT)
FRAME_SCHEMAS = sorted(n for n in doc.schemas if n != "common")


# --- the document's own consistency --------------------------------------------------------


def test_document_has_schemas_and_examples() -> None:
    assert len(doc.schemas) >= len(CLIENT_TYPES) + len(SERVER_TYPES) + 1
    assert len(doc.examples) >= len(FRAME_SCHEMAS)


@pytest.mark.parametrize("name", sorted(doc.schemas))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = doc.schemas[name]
    assert schema.get("$schema") == "https://json-schema.org/draft/2020-12/schema"
    assert schema.get("$id") == ID_PREFIX + name
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("direction,types", [("client", CLIENT_TYPES), ("server", SERVER_TYPES)])
def test_every_contract_frame_has_a_schema_in_its_direction(
    direction: str, types: set[str]
) -> None:
    documented = {n.split("/", 1)[1] for n in FRAME_SCHEMAS if n.startswith(direction + "/")}
    assert documented == types


@pytest.mark.parametrize("name", FRAME_SCHEMAS)
def test_every_frame_schema_has_an_example(name: str) -> None:
    assert any(n == name for n, _ in doc.examples), f"no ```json example={name}"


@pytest.mark.parametrize(
    "name,example", doc.examples, ids=[f"{n}-{i}" for i, (n, _) in enumerate(doc.examples)]
)
def test_example_validates_against_its_schema(name: str, example: dict[str, Any]) -> None:
    assert name in doc.schemas, f"example of an undocumented frame {name}"
    assert example["type"] == name.split("/", 1)[1]
    assert doc.errors(name, example) == []
    # The schema pins the frame type: the same frame with another type is refused.
    other = dict(example, type="bogus")
    assert doc.errors(name, other) != []


@pytest.mark.parametrize("name", sorted(n for n in FRAME_SCHEMAS if n.startswith("server/")))
def test_server_schemas_refuse_undocumented_fields(name: str) -> None:
    example = next(e for n, e in doc.examples if n == name)
    assert doc.errors(name, dict(example, undocumentedField=1)) != []


def _without(frame: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k not in keys}


def _example(name: str, index: int = 0) -> dict[str, Any]:
    return copy.deepcopy([e for n, e in doc.examples if n == name][index])


# Frames the contract forbids; each must be refused by its schema (the schemas are not vacuous).
COUNTEREXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("client/auth", _without(_example("client/auth"), "userId")),
    ("client/auth", dict(_example("client/auth"), acks="yes")),
    ("client/message", dict(_example("client/message"), groupId="runners")),  # both targets
    ("client/message", _without(_example("client/message"), "recipientId")),  # no target
    ("client/message", dict(_example("client/message"), text="")),
    ("client/message", dict(_example("client/message"), text="x" * 4097)),
    ("client/message", dict(_example("client/message"), id="x" * 65)),
    ("client/message", dict(_example("client/message"), meta=[1])),
    ("client/receipt", dict(_example("client/receipt"), status="sent")),
    ("client/receipt", dict(_example("client/receipt"), seq=0)),
    ("client/status", dict(_example("client/status"), status="offline")),
    ("client/history", dict(_example("client/history"), limit=101)),
    ("client/history", dict(_example("client/history"), after=3)),  # before and after
    ("client/typing", dict(_example("client/typing"), state="typing")),
    ("client/presence", dict(_example("client/presence"), userIds="user_456")),
    ("client/group_create", _without(_example("client/group_create"), "groupId")),
    ("client/group_create", dict(_example("client/group_create"), members="user_456")),
    ("server/auth_ok", _without(_example("server/auth_ok"), "sessionId")),
    ("server/auth_ok", dict(_example("server/auth_ok"), serverTime="2026-02-05 10:30:00")),
    ("server/error", dict(_example("server/error"), code="teapot")),
    ("server/error", _without(_example("server/error"), "field")),  # invalid names its field
    ("server/receipt", _without(_example("server/receipt", 0), "seq")),  # sent without seq
    ("server/receipt", _without(_example("server/receipt", 0), "peerId")),  # sent: to whom?
    ("server/receipt", _without(_example("server/receipt", 1), "reason")),  # failed, no reason
    ("server/receipt", dict(_example("server/receipt", 1), seq=4)),  # failed has no seq
    ("server/receipt", _without(_example("server/receipt", 2), "userId")),  # whose watermark?
    ("server/message", dict(_example("server/message"), status="pending")),
    ("server/message", _without(_example("server/message"), "seq")),
    ("server/message", dict(_example("server/message"), groupId="runners")),
    ("server/status", _without(_example("server/status", 1), "lastSeen")),
    ("server/presence", {"type": "presence", "users": [{"userId": "a", "status": "online"}]}),
    ("server/history", _without(_example("server/history"), "hasMore")),
    ("server/conversations", {"type": "conversations", "items": [{"peerId": "a"}]}),
    ("server/group", dict(_example("server/group"), members=["a", "a"])),
    ("server/group", dict(_example("server/group"), event="rename")),
    ("server/pong", _without(_example("server/pong"), "serverTime")),
]


@pytest.mark.parametrize(
    "name,frame", COUNTEREXAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(COUNTEREXAMPLES)]
)
def test_schema_refuses_what_the_contract_forbids(name: str, frame: dict[str, Any]) -> None:
    assert doc.errors(name, frame) != []


def test_error_codes_table_and_schema_match_the_contract() -> None:
    table = {row[0].strip("`") for row in doc.table_rows("| code | when | connection |")}
    assert table == ERROR_CODES
    enum = doc.schemas["server/error"]["properties"]["code"]["enum"]
    assert set(enum) == ERROR_CODES


def test_close_codes_table_covers_every_code() -> None:
    table = {int(row[0]) for row in doc.table_rows("### Close codes")}
    assert table == CLOSE_CODES


def _serve_flags() -> dict[str, set[str]]:
    """`relay serve`'s option strings by destination (the RelayConfig field they set)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: dict[str, set[str]] = {}
    for action in sub.choices["serve"]._actions:
        flags.setdefault(action.dest, set()).update(action.option_strings)
    return flags


def test_limits_table_matches_relay_config_and_the_cli() -> None:
    rows = {row[0].strip("`"): row for row in doc.table_rows("## Limits")}
    fields = {f.name: f for f in attrs.fields(RelayConfig)}
    assert set(rows) == set(fields), "the limits table must list every RelayConfig field"
    flags = _serve_flags()
    for name, (_, default, flag_cell, env, meaning) in rows.items():
        assert ast.literal_eval(default.strip("`")) == fields[name].default, name
        documented = set(re.findall(r"`(--[a-z-]+)", flag_cell))
        assert documented and documented <= flags.get(name, set()), (name, flags.get(name))
        assert f"`RELAY_{name.upper()}`" in env, name
        assert meaning, name
    assert "`PORT`" in rows["port"][3]


@pytest.mark.parametrize(
    "name,env,text,value",
    [
        ("max_text_chars", "RELAY_MAX_TEXT_CHARS", "100", 100),
        ("presence_grace", "RELAY_PRESENCE_GRACE", "0.5", 0.5),
        ("retention_days", "RELAY_RETENTION_DAYS", "none", None),
        ("web_chat", "RELAY_WEB_CHAT", "true", True),
        ("port", "PORT", "9000", 9000),
    ],
)
def test_documented_environment_variables_configure_the_relay(
    name: str, env: str, text: str, value: object
) -> None:
    args = build_parser().parse_args(["serve"])
    assert getattr(config_from(args, {env: text}), name) == value
