"""systemd notification (relay.notify) with a real AF_UNIX datagram socket the test binds, as
systemd does for a Type=notify unit: `python -m relay serve` sends READY=1 only once it
listens, and STOPPING=1 when SIGTERM starts the drain."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relay.notify import notify, notify_address

URL_LINE = re.compile(r"WebSocket server running on wss?://\S+:(\d+)")
WAIT = 20.0


@contextmanager
def notify_socket(address: str | bytes) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(WAIT)
        yield sock
    finally:
        sock.close()


def states(sock: socket.socket) -> dict[str, str]:
    """One datagram's KEY=VALUE lines."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def _environ(notify_socket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "NOTIFY_"))}
    for keep in ("RELAY_PURE", "RELAY_REQUIRE_EXT"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    env.pop("PORT", None)
    return {**env, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify_socket}


def serve_and_drain(tmp_path: Path, sock: socket.socket, name: str) -> None:
    """Run `python -m relay serve` notifying `name`; check READY=1 comes after the listening
    line with the port accepting, STOPPING=1 after SIGTERM, and exit 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", "--memory"],
        cwd=tmp_path,
        env=_environ(name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = states(sock)
        assert ready["READY"] == "1", ready
        assert "STOPPING" not in ready
        # READY=1 is sent after the listening line is written: it is already in the pipe
        assert process.stdout is not None
        match = URL_LINE.search(process.stdout.readline())
        assert match is not None
        assert ready["STATUS"].endswith(f":{match.group(1)}"), ready
        # and the port answers when systemd is told so
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=WAIT):
            pass
        process.send_signal(signal.SIGTERM)
        stopping = states(sock)
        assert stopping["STOPPING"] == "1", stopping
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.communicate()[1]
    assert "Traceback" not in stderr, stderr


def test_ready_after_listening_and_stopping_on_sigterm(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as sock:
        serve_and_drain(tmp_path, sock, path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_abstract_namespace_socket(tmp_path: Path) -> None:
    name = f"relay-test-notify-{os.getpid()}"
    with notify_socket(b"\0" + name.encode()) as sock:
        serve_and_drain(tmp_path, sock, "@" + name)


def test_address_forms() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@sd-notify"}) == b"\0sd-notify"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_nowhere_to_send_is_not_an_error(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    # a path nothing listens on: systemd gone; the relay goes on
    missing = str(tmp_path / "gone.sock")
    assert notify("READY=1", environ={"NOTIFY_SOCKET": missing}) is False


def test_one_datagram_per_call(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with notify_socket(path) as sock:
        assert notify("READY=1", "STATUS=up", environ={"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
