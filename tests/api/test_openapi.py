"""The OpenAPI document: equal to the code's routes, served as built, and schemathesis against
the live API (no 5xx, every answer as the document says, bad input refused)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import orjson
import trio
from api_support import KEY, api_client, base_url

from relay import Relay
from relay.api.openapi import OPERATIONS, document
from relay.protocol import Limits
from relay.protocol.limits import IDENT_MAX

# The two rules the document cannot say (OpenAPI has no way to make two query parameters
# exclude each other, nor to name the files a sender uploaded): `before` and `after` together
# are refused, as in a `history` frame; a publish's attachment whose fileId is not a file
# senderId uploaded is refused (400 invalid, field attachments; test_publish checks it).
SCHEMATHESIS_TOML = """
[[operations]]
include-path-regex = "/messages$"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "/publish$"
checks.positive_data_acceptance.enabled = false
"""


async def test_the_document_names_exactly_the_routes_the_relay_serves(relay: Relay) -> None:
    # the API's routes (the same table also serves /files, documented apart)
    served = {
        (m, r.template)
        for r in relay.routes.routes
        for m in r.methods
        if r.template.startswith("/api/")
    }
    assert served == set(OPERATIONS)
    doc = document(Limits.from_config(relay.config))
    in_doc = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert in_doc == set(OPERATIONS)
    async with api_client(relay, key=None) as api:  # the document needs no key
        r = await api.get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == orjson.loads(orjson.dumps(doc))
    assert r.json()["openapi"].startswith("3.1")
    # its limits are the code's
    publish = doc["components"]["schemas"]["Publish"]["properties"]
    assert publish["text"]["maxLength"] == relay.config.max_text_chars
    assert publish["senderId"]["maxLength"] == IDENT_MAX


async def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_document(
    relay: Relay, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    command = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "--config-file",
        str(config),
        "run",
        f"{base_url(relay)}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--max-examples",
        "25",
        "--seed",
        "20261205",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
    ]
    with trio.fail_after(240):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
        )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out[-6000:]
    assert "No issues found" in out
    assert "Tested: 6" in out or "Tested: 7" in out
    # and the relay stays well
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base_url(relay)}/healthz")).text == "ok"


def test_docs_http_api_describes_every_route() -> None:
    text = (Path(__file__).parents[2] / "docs" / "HTTP-API.md").read_text()
    for method, path in OPERATIONS:
        assert f"{method} {path}" in text or f"`{method} {path}" in text, (method, path)
