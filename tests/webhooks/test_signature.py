"""relay.webhooks.verify, the helper a backend uses on every webhook request it receives."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from relay.errors import ConfigError, RelayError
from relay.webhooks import WebhookSignatureError, sign, verify
from relay.webhooks.signature import read_secret_file

BODY = b'{"events":[{"id":"evt_1"}]}'
NOW = 1_800_000_000


def test_the_header_is_the_contracts_hmac_of_t_dot_body() -> None:
    header = sign("k3y", BODY, NOW)
    digest = hmac.new(b"k3y", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={digest}"
    assert verify("k3y", BODY, header, now=NOW) == NOW


def test_trailing_whitespace_of_the_secret_is_not_part_of_the_key() -> None:
    header = sign("k3y\n", BODY, NOW)
    assert header == sign(b"k3y", BODY, NOW)
    assert verify("k3y \r\n", BODY, header, now=NOW) == NOW
    with pytest.raises(WebhookSignatureError):
        verify(" k3y", BODY, header, now=NOW)  # leading whitespace is part of it


@pytest.mark.parametrize(
    ("secret", "body", "why"),
    [("other", BODY, "another key"), ("k3y", BODY + b" ", "a changed body")],
)
def test_a_forged_request_is_refused(secret: str, body: bytes, why: str) -> None:
    with pytest.raises(WebhookSignatureError, match="no v1 matches"):
        verify(secret, body, sign("k3y", BODY, NOW), now=NOW)


def test_the_timestamp_must_be_within_the_tolerance() -> None:
    header = sign("k3y", BODY, NOW)
    assert verify("k3y", BODY, header, now=NOW + 300) == NOW
    assert verify("k3y", BODY, header, now=NOW - 300) == NOW
    with pytest.raises(WebhookSignatureError, match="tolerance 300"):
        verify("k3y", BODY, header, now=NOW + 301)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify("k3y", BODY, header, now=NOW + 11, tolerance=10)
    # a replayed timestamp cannot be moved: it is signed with the body
    moved = header.replace(f"t={NOW}", f"t={NOW + 1000}")
    with pytest.raises(WebhookSignatureError, match="no v1 matches"):
        verify("k3y", BODY, moved, now=NOW + 1000)


def test_any_one_of_several_signatures_may_match() -> None:
    good = sign("k3y", BODY, NOW).partition(",")[2]
    assert verify("k3y", BODY, f"t={NOW},v1={'0' * 64},{good}", now=NOW) == NOW


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", f"t={NOW}", "v1=abcd", f"t=-{NOW},v1=ab", "t=1e9,v1=ab", "t=,v1=ab"],
)
def test_a_malformed_header_is_refused_with_the_helpers_error(header: str | None) -> None:
    with pytest.raises(WebhookSignatureError) as raised:
        verify("k3y", BODY, header, now=NOW)
    assert isinstance(raised.value, RelayError)


def test_the_secret_file_is_read_without_trailing_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret\r\n\n")
    assert read_secret_file(path) == b"s3cret"
    path.write_bytes(b" \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret_file(path)
    with pytest.raises(ConfigError, match="missing"):
        read_secret_file(tmp_path / "missing")
