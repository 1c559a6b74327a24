"""Shared fixtures. Helpers for starting a relay and talking to it live in tests/support.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
NODE_DIR = TESTS / "node"

# Let test modules import tests/support.py as `support` wherever pytest is started.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def node() -> str:
    """Path of the `node` executable, with tests/node's packages (`ws`) installed.

    Without node/npm the Node tests FAIL with a clear message; RELAY_SKIP_NODE=1 skips them
    explicitly instead."""
    skip = os.environ.get("RELAY_SKIP_NODE") == "1"
    node_path = shutil.which("node")
    npm_path = shutil.which("npm")
    if node_path is None or npm_path is None:
        missing = "node" if node_path is None else "npm"
        message = (
            f"{missing} is not installed: the Node `ws` interoperability tests need Node.js "
            "and npm (set RELAY_SKIP_NODE=1 to skip them deliberately)"
        )
        if skip:
            pytest.skip(message)
        pytest.fail(message)
    if skip:
        pytest.skip("RELAY_SKIP_NODE=1")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        command = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
        result = subprocess.run(
            [npm_path, command, "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"`npm {command}` in {NODE_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return node_path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (certfile, keyfile), for wss:// and https://."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
