"""The OpenAPI 3.1 document of the HTTP API, built from the same limits the code enforces.

`document(limits)` is what `GET /api/v1/openapi.json` serves. Its numbers (id lengths, text
and meta sizes, page limits, group size) come from relay.protocol.limits and the relay's
Limits, so the document cannot drift from the checks; tests/api/test_openapi.py holds its
paths and methods equal to the route table, and schemathesis holds the answers to it.
"""

from __future__ import annotations

from typing import Any

from relay.api.backend import CLOSE_REASON_MAX
from relay.fastpath import (
    ATTACHMENT_ID_MAX,
    ATTACHMENTS_MAX,
    E2E_BOXES_MAX,
    E2E_BYTES_MAX,
    E2E_SUITE,
)
from relay.protocol import Limits
from relay.protocol.limits import (
    GROUP_NAME_MAX,
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    IDENT_MAX,
    MESSAGE_ID_MAX,
    SEQ_MAX,
    SHORT_TEXT_MAX,
)

BASE = "/api/v1"

#: every route: (method, path) -> operationId; the route table registers exactly these
OPERATIONS: dict[tuple[str, str], str] = {
    ("POST", f"{BASE}/publish"): "publish",
    ("GET", f"{BASE}/users/{{userId}}/presence"): "getPresence",
    ("GET", f"{BASE}/users/{{userId}}/conversations/{{peerId}}/messages"): "getConversation",
    ("GET", f"{BASE}/groups/{{groupId}}/messages"): "getGroupMessages",
    ("POST", f"{BASE}/users/{{userId}}/disconnect"): "disconnectUser",
    ("PUT", f"{BASE}/groups/{{groupId}}"): "putGroup",
    ("GET", f"{BASE}/openapi.json"): "getOpenApi",
}

ERROR_CODES = [
    "bad_json",
    "bad_frame",
    "invalid",
    "too_long",
    "unauthenticated",
    "forbidden",
    "not_found",
    "rate_limited",
    "method_not_allowed",
    "unsupported_media_type",
    "internal",
    "unavailable",
]


def _ident(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": IDENT_MAX, "description": description}


#: an encrypted message's object (docs/PROTOCOL.md, "Encrypted messages"): checked for shape
#: and size only, stored and returned untouched; a message with it has no text
_BASE64 = "^(?:[A-Za-z0-9+/]{4})+$|^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
_E2E: dict[str, Any] = {
    "type": "object",
    "required": ["v", "suite", "senderDevice", "boxes"],
    "additionalProperties": False,
    "properties": {
        "v": {"const": 1},
        "suite": {"const": E2E_SUITE},
        "senderDevice": {"type": "string", "minLength": 1, "maxLength": IDENT_MAX},
        "boxes": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": E2E_BOXES_MAX,
            "propertyNames": {"minLength": 1, "maxLength": IDENT_MAX},
            "additionalProperties": {
                "type": "string",
                "description": "standard base64, padded",
                "pattern": _BASE64,
            },
        },
    },
    "description": f"an end-to-end encrypted message, at most {E2E_BYTES_MAX} bytes as JSON",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ident(description)}


def _json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


_COMMON_ERRORS = {
    "400": _error("The request is invalid (`code` and `field` say why, as in error frames)"),
    "401": _error("No valid API key (`Authorization: Bearer <key>`)"),
    "503": _error("The store is unavailable; nothing was done; retry"),
}


#: the files a published message carries (docs/PROTOCOL.md, "Attachments"): each a file
#: senderId uploaded (POST /files), else the publish is refused (invalid, field attachments)
_ATTACHMENTS_SENT: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": ATTACHMENTS_MAX,
    "items": {
        "type": "object",
        "required": ["fileId"],
        "properties": {
            "fileId": {"type": "string", "minLength": 1, "maxLength": ATTACHMENT_ID_MAX},
        },
    },
}
#: the files a stored message carries, as the relay resolved them at publish time
_ATTACHMENTS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["fileId", "name", "size", "mime", "sha256"],
        "properties": {
            "fileId": {"type": "string"},
            "name": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "mime": {"type": "string"},
            "sha256": {"type": "string"},
        },
    },
}


def _schemas(limits: Limits) -> dict[str, Any]:
    seq = {"type": "integer", "minimum": 1, "maximum": SEQ_MAX}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "enum": ERROR_CODES},
                        "message": {"type": "string", "minLength": 1},
                        "field": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "Publish": {
            "type": "object",
            "required": ["senderId"],
            "additionalProperties": False,
            "description": "Exactly one of recipientId and groupId; text, or e2e (encrypted), "
            "or attachments (files senderId uploaded) with an optional text.",
            "properties": {
                "senderId": _ident("who the message is from"),
                "recipientId": _ident("the recipient of a 1:1 message"),
                "groupId": _ident("the group of a group message (senderId must be a member)"),
                "text": {"type": "string", "minLength": 1, "maxLength": limits.max_text_chars},
                "id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MESSAGE_ID_MAX,
                    "description": "idempotency key per senderId (random when absent)",
                },
                "senderName": {"type": "string", "maxLength": SHORT_TEXT_MAX},
                "meta": {
                    "type": "object",
                    "description": f"at most {limits.max_meta_bytes} bytes as JSON",
                },
                "e2e": _E2E,
                "attachments": _ATTACHMENTS_SENT,
            },
            "oneOf": [{"required": ["recipientId"]}, {"required": ["groupId"]}],
            "anyOf": [
                {"required": ["text"], "not": {"required": ["e2e"]}},
                {
                    "required": ["e2e"],
                    "not": {"anyOf": [{"required": ["text"]}, {"required": ["attachments"]}]},
                },
                {"required": ["attachments"], "not": {"required": ["e2e"]}},
            ],
        },
        "Published": {
            "type": "object",
            "required": ["id", "seq", "timestamp"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "seq": seq,
                "timestamp": {"type": "string", "description": "server time, ISO-8601 UTC"},
            },
        },
        "Presence": {
            "type": "object",
            "required": ["userId", "status", "lastSeen", "devices"],
            "additionalProperties": False,
            "properties": {
                "userId": {"type": "string"},
                "status": {"type": "string", "enum": ["online", "away", "busy", "offline"]},
                "lastSeen": {"type": ["string", "null"]},
                "devices": {"type": "integer", "minimum": 0},
            },
        },
        "Message": {
            "type": "object",
            "description": "A message as the `message` frame and `history` carry it.",
            "required": ["type", "id", "seq", "senderId", "timestamp", "status"],
            "properties": {
                "type": {"const": "message"},
                "id": {"type": "string"},
                "seq": seq,
                "senderId": {"type": "string"},
                "recipientId": {"type": "string"},
                "groupId": {"type": "string"},
                "text": {"type": "string"},
                "timestamp": {"type": "string"},
                "serverTimestamp": {"type": "string"},
                "senderName": {"type": "string"},
                "meta": {"type": "object"},
                "e2e": _E2E,
                "attachments": _ATTACHMENTS,
                "call": {
                    "type": "object",
                    "description": "The record a call left (docs/PROTOCOL.md, Calls); only "
                    "on the message the relay stores for a call.",
                    "required": ["callId", "media", "outcome", "durationMs"],
                    "properties": {
                        "callId": {"type": "string"},
                        "media": {"type": "string", "enum": ["audio", "video"]},
                        "outcome": {
                            "type": "string",
                            "enum": ["answered", "missed", "rejected", "busy", "unavailable"],
                        },
                        "durationMs": {"type": "integer", "minimum": 0},
                    },
                },
                "status": {"type": "string", "enum": ["sent", "delivered", "read"]},
            },
        },
        "Page": {
            "type": "object",
            "required": ["items", "hasMore"],
            "additionalProperties": False,
            "properties": {
                "items": {"type": "array", "items": _ref("Message")},
                "hasMore": {"type": "boolean"},
            },
        },
        "Disconnect": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reason": {
                    "type": "string",
                    "maxLength": CLOSE_REASON_MAX,
                    "description": f"the close frame's reason, at most {CLOSE_REASON_MAX} "
                    "bytes of UTF-8",
                }
            },
        },
        "Disconnected": {
            "type": "object",
            "required": ["userId", "closed"],
            "additionalProperties": False,
            "properties": {
                "userId": {"type": "string"},
                "closed": {"type": "integer", "minimum": 0},
            },
        },
        "GroupIn": {
            "type": "object",
            "required": ["members"],
            "additionalProperties": False,
            "properties": {
                "name": {
                    "type": "string",
                    "maxLength": GROUP_NAME_MAX,
                    "description": "fixed at creation (default: the group id)",
                },
                "members": {
                    "type": "array",
                    "description": "the first is a new group's createdBy",
                    "minItems": 1,
                    "maxItems": limits.max_group_members,
                    "items": _ident("a member"),
                },
            },
        },
        "Group": {
            "type": "object",
            "required": ["groupId", "name", "members", "createdBy", "createdAt"],
            "additionalProperties": False,
            "properties": {
                "groupId": {"type": "string"},
                "name": {"type": "string"},
                "members": {"type": "array", "items": {"type": "string"}},
                "createdBy": {"type": "string"},
                "createdAt": {"type": "string"},
            },
        },
    }


def _page_params() -> list[dict[str, Any]]:
    return [
        {
            "name": "before",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": SEQ_MAX},
            "description": "messages with a lower seq (excludes `after`)",
        },
        {
            "name": "after",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": SEQ_MAX},
            "description": "messages with a higher seq (excludes `before`)",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": HISTORY_LIMIT_MAX,
                "default": HISTORY_LIMIT_DEFAULT,
            },
        },
    ]


def document(limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this relay's HTTP API."""
    secured: list[dict[str, list[str]]] = [{"apiKey": []}]
    paths: dict[str, dict[str, Any]] = {
        f"{BASE}/publish": {
            "post": {
                "summary": "Publish a 1:1 or group message, answered once durable",
                "description": "Idempotent on (senderId, id): a resend gets the first "
                "publish's seq and is not delivered again.",
                "requestBody": _json_body("Publish"),
                "responses": {
                    "200": _ok("Stored (durably) and on its way", "Published"),
                    **_COMMON_ERRORS,
                    "403": _error("senderId is not a member of the group"),
                    "404": _error("no such group"),
                    "413": _error("body over max_message_bytes"),
                    "415": _error("not application/json"),
                },
            }
        },
        f"{BASE}/users/{{userId}}/presence": {
            "get": {
                "summary": "A user's presence",
                "parameters": [_path_param("userId", "the user")],
                "responses": {"200": _ok("The user's presence", "Presence"), **_COMMON_ERRORS},
            }
        },
        f"{BASE}/users/{{userId}}/conversations/{{peerId}}/messages": {
            "get": {
                "summary": "A page of a 1:1 conversation, as userId's `history` frame",
                "parameters": [
                    _path_param("userId", "whose view (statuses of their own messages)"),
                    _path_param("peerId", "the other participant"),
                    *_page_params(),
                ],
                "responses": {"200": _ok("The page, oldest first", "Page"), **_COMMON_ERRORS},
            }
        },
        f"{BASE}/groups/{{groupId}}/messages": {
            "get": {
                "summary": "A page of a group's messages (status as each sender sees it)",
                "parameters": [_path_param("groupId", "the group"), *_page_params()],
                "responses": {
                    "200": _ok("The page, oldest first", "Page"),
                    **_COMMON_ERRORS,
                    "404": _error("no such group"),
                },
            }
        },
        f"{BASE}/users/{{userId}}/disconnect": {
            "post": {
                "summary": "Close every connection of the user with 1008",
                "parameters": [_path_param("userId", "the user")],
                "requestBody": _json_body("Disconnect", required=False),
                "responses": {
                    "200": _ok("The connections were closed", "Disconnected"),
                    **_COMMON_ERRORS,
                    "413": _error("body too large"),
                    "415": _error("not application/json"),
                },
            }
        },
        f"{BASE}/groups/{{groupId}}": {
            "put": {
                "summary": "Create a group or set its members",
                "parameters": [_path_param("groupId", "the group")],
                "requestBody": _json_body("GroupIn"),
                "responses": {
                    "200": _ok("The group's members were set (or already were)", "Group"),
                    "201": _ok("The group was created", "Group"),
                    **_COMMON_ERRORS,
                    "409": _error("a different name for an existing group"),
                    "413": _error("body too large"),
                    "415": _error("not application/json"),
                },
            }
        },
        f"{BASE}/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    for (method, path), operation_id in OPERATIONS.items():
        paths[path][method.lower()]["operationId"] = operation_id
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay HTTP API",
            "version": "1",
            "description": "The relay's API for the application's backend; see docs/HTTP-API.md.",
        },
        "servers": [{"url": "/"}],
        "security": secured,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key (api_keys / api_keys_file)",
                }
            },
            "schemas": _schemas(limits),
        },
    }
