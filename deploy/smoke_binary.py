"""Smoke test of the standalone binary (deploy/build-binary.sh), as CI runs it.

    python deploy/smoke_binary.py [dist/relay]

Copies the binary into a fresh temporary folder outside the checkout and runs it there with a
clean environment (`env -i PATH=/usr/bin:/bin HOME=<that folder>`: no venv, no PYTHONPATH, no
RELAY_* variable), so it can only use what it carries. Then, from this process (a client that
is not the binary):
- the startup log says the compiled fast path runs (`fast path: cython`);
- `--web-chat` serves the chat page at `/`;
- two users authenticate over WebSocket (the `websockets` library), alice sends bob a message,
  alice gets the `sent` receipt and bob the delivery;
- with NOTIFY_SOCKET set (a datagram socket this script binds, as systemd does), it sends
  READY=1 once listening and STOPPING=1 on SIGTERM;
- SIGTERM drains and the binary exits 0;
- all of that under prctl(PR_SET_MDWE) when the kernel has it (memory never writable and
  executable), the rule deploy/relay.service sets with MemoryDenyWriteExecute=yes.
It prints the binary's size and its start-up time (launch to the listening line; median of
5 starts). Exit status 0 when all holds; any failure raises with what was seen.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

LISTENING = "WebSocket server running on "
WAIT = 10.0  # seconds: a one-file binary unpacks itself before Python starts
STARTS = 5


#: prctl(2) options (linux/prctl.h): refuse memory that is or was writable to become
#: executable, inherited by children and kept across execve (Linux >= 6.3). systemd's
#: MemoryDenyWriteExecute=yes (deploy/relay.service) enforces the same rule with seccomp.
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def mdwe_supported() -> bool:
    """Whether this kernel enforces PR_SET_MDWE: a child under it cannot map W+X memory."""
    probe = "import mmap; mmap.mmap(-1, 4096, prot=7)"  # PROT_READ|PROT_WRITE|PROT_EXEC
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe],
            preexec_fn=deny_write_execute,
            capture_output=True,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode != 0 and b"PermissionError" in result.stderr


def launch(
    binary: Path, home: Path, *args: str, mdwe: bool = False, **env: str
) -> subprocess.Popen[str]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}
    return subprocess.Popen(
        [str(binary), "serve", "--port", "0", *args],
        cwd=home,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=deny_write_execute if mdwe else None,
        # its own process group: the one-file binary is two processes (the bootloader and the
        # Python it starts), and a failed run must kill both
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def notification(sock: socket.socket) -> tuple[dict[str, str], int]:
    """One sd_notify datagram's KEY=VALUE states and the sending process's pid."""
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return dict(line.split("=", 1) for line in data.decode().splitlines()), pid


def wait_listening(proc: subprocess.Popen[str]) -> str:
    """The URL of the listening line (stdout); raises when the process ends first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(LISTENING):
            return line[len(LISTENING) :].strip()
        if not line and proc.poll() is not None:
            break
    kill(proc)
    _out, err = proc.communicate()
    raise SystemExit(f"smoke: the binary did not print its listening line; stderr:\n{err}")


def stop(proc: subprocess.Popen[str], signalled: bool = False) -> str:
    """SIGTERM (to the bootloader, which passes it on) unless `signalled` already, then wait
    for exit 0; returns stderr. Exactly one SIGTERM: trio redelivers a signal that arrives
    during the drain when the relay stops listening for signals, so a second one ends the
    process by SIGTERM after the drain (status -15), as systemd's KillMode=mixed avoids."""
    if not signalled:
        proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=WAIT)
    if proc.returncode != 0:
        raise SystemExit(f"smoke: exit status {proc.returncode} after SIGTERM; stderr:\n{err}")
    return err


def expect(ws: ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    """The first frame of `kind` whose fields equal `match` (others are skipped)."""
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"smoke: no {kind} frame matching {match}")
        frame: dict[str, Any] = json.loads(ws.recv(timeout=left))
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


@contextmanager
def auth(url: str, user: str) -> Iterator[ClientConnection]:
    with connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "auth", "userId": user, "userName": user.title()}))
        expect(ws, "auth_ok")
        yield ws


def exchange(url: str) -> None:
    with auth(url, "alice") as alice, auth(url, "bob") as bob:
        alice.send(
            json.dumps(
                {"type": "message", "id": "smoke-1", "recipientId": "bob", "text": "hello, binary"}
            )
        )
        sent = expect(alice, "receipt", id="smoke-1", status="sent")
        got = expect(bob, "message", id="smoke-1")
        if got["text"] != "hello, binary" or got["senderId"] != "alice":
            raise SystemExit(f"smoke: bob got {got}")
        print(f"smoke: message exchanged (sent seq {sent['seq']}, delivered to bob)")


def main(argv: list[str]) -> int:
    source = Path(argv[1] if len(argv) > 1 else "dist/relay").resolve()
    if not source.is_file():
        raise SystemExit(f"smoke: no binary at {source} (bash deploy/build-binary.sh builds it)")
    size = source.stat().st_size
    with tempfile.TemporaryDirectory(prefix="relay-smoke-") as folder:
        home = Path(folder)
        binary = home / "relay"
        shutil.copy2(source, binary)

        # Under write-xor-execute when the kernel has it: the unit's MemoryDenyWriteExecute=yes
        # must not break the binary.
        mdwe = mdwe_supported()
        print(f"smoke: write-xor-execute (PR_SET_MDWE): {'on' if mdwe else 'not in this kernel'}")
        # And under a notification socket, as systemd gives a Type=notify unit.
        notify_path = str(home / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(WAIT)
        proc = launch(
            binary,
            home,
            "--web-chat",
            "--db",
            str(home / "relay.db"),
            mdwe=mdwe,
            NOTIFY_SOCKET=notify_path,
        )
        url = wait_listening(proc)
        try:
            ready, sender = notification(sock)
            if ready.get("READY") != "1":
                raise SystemExit(f"smoke: first notification is not READY=1: {ready}")
            # The sender is the bootloader's child, not the main pid systemd started: hence
            # NotifyAccess=all in deploy/relay.service.
            print(
                f"smoke: READY=1 from pid {sender} "
                f"({'the main pid' if sender == proc.pid else 'a child of the main pid'})"
            )
            port = url.rsplit(":", 1)[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=WAIT) as page:
                body = page.read().decode()
            if page.status != 200 or "<html" not in body.lower():
                raise SystemExit(f"smoke: GET / answered {page.status}: {body[:200]!r}")
            print("smoke: --web-chat serves the chat page at /")
            exchange(url)
            proc.send_signal(signal.SIGTERM)
            stopping, _ = notification(sock)
            if stopping.get("STOPPING") != "1":
                raise SystemExit(f"smoke: no STOPPING=1 on SIGTERM: {stopping}")
            print("smoke: STOPPING=1 on SIGTERM")
        except BaseException:
            kill(proc)
            raise
        finally:
            sock.close()
        log = stop(proc, signalled=True)
        if "relay: stopped" not in log:
            raise SystemExit(f"smoke: SIGTERM to the binary did not drain the relay; log:\n{log}")
        if "fast path: cython" not in log:
            raise SystemExit(f"smoke: the binary does not run the compiled fast path; log:\n{log}")
        print("smoke: fast path: cython; SIGTERM drained, exit 0")

        # Start-up: launch to listening line, in-memory store (the store's open is not the
        # binary's cost); each start unpacks the one file into a fresh temporary folder.
        times = []
        for _ in range(STARTS):
            began = time.perf_counter()
            proc = launch(binary, home, "--memory")
            wait_listening(proc)
            times.append(time.perf_counter() - began)
            stop(proc)
    print(f"smoke: binary size {size / 1e6:.1f} MB ({size} bytes)")
    print(
        f"smoke: start-up to listening line: median {statistics.median(times):.2f} s "
        f"of {STARTS} ({', '.join(f'{t:.2f}' for t in times)})"
    )
    return 0


if __name__ == "__main__":
    if os.name != "posix":
        raise SystemExit("smoke: POSIX only")
    sys.exit(main(sys.argv))
