"""`relay` as an operator meets it: real `python -m relay` processes on 127.0.0.1.

Every startup failure is one line on stderr, `relay: error: ...`, naming the file or address,
with exit status 2 (usage, configuration) or 1 (store, socket, TLS files) and no traceback;
without token auth the relay listens on loopback only unless told otherwise; the SQLite files
it creates are owner-only; the distribution installs `relay` and nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from relay.cli import OTHER_VARIABLES, build_parser, is_loopback, unknown_variables
from relay.config import RelayConfig

ROOT = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r"WebSocket server running on (wss?://(\S+):(\d+))")
SECRET = "s" * 48


def _environ(**extra: str) -> dict[str, str]:
    """This environment without RELAY_* settings (the variables OTHER_VARIABLES names stay)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RELAY_") or k in OTHER_VARIABLES
    }
    env.pop("PORT", None)
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def relay(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m relay ARGS` run to its end (a failure to start must end it quickly)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=_environ(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The failure's only stderr line, after checking its form and the exit status."""
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay: error: "), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


@contextmanager
def serving(*args: str, cwd: Path, **env: str) -> Iterator[tuple[re.Match[str], list[str]]]:
    """A `python -m relay serve` on port 0 until the block ends (then SIGTERM, exit 0): its URL
    line's match and, once it has stopped, its stderr lines (the list is filled on exit)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", "0", *args],
        cwd=cwd,
        env=_environ(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,  # the store's file modes must not depend on the umask
    )
    stderr: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        match = None
        while match is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            match = URL_LINE.search(line)
        assert match is not None, f"no URL line; stderr: {process.communicate()[1]}"
        yield match, stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        stderr.extend(process.communicate()[1].splitlines())


def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --- startup failures ---------------------------------------------------------------------------


def test_store_that_cannot_open_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing_dir = tmp_path / "nowhere" / "relay.db"
    line = assert_one_error_line(
        relay("serve", "--port", "0", "--db", str(missing_dir), cwd=tmp_path), 1
    )
    assert str(missing_dir) in line and "does not exist" in line

    not_a_db = tmp_path / "notes.db"
    not_a_db.write_bytes(b"these are not the pages of a SQLite database\n" * 200)
    line = assert_one_error_line(
        relay("serve", "--port", "0", "--db", str(not_a_db), cwd=tmp_path), 1
    )
    assert str(not_a_db) in line and "not a SQLite database" in line


def test_missing_certificate_is_one_line_naming_the_file(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_text("not a key\n")
    result = relay("serve", "--port", "0", "--memory", "--certfile", str(cert), "--keyfile", str(key), cwd=tmp_path)  # fmt: skip
    line = assert_one_error_line(result, 1)
    assert str(cert) in line and "No such file or directory" in line

    cert.write_text("not a certificate\n")
    result = relay("serve", "--port", "0", "--memory", "--certfile", str(cert), "--keyfile", str(key), cwd=tmp_path)  # fmt: skip
    line = assert_one_error_line(result, 1)
    assert str(cert) in line and str(key) in line


def test_taken_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    for port in taken_port():
        result = relay("serve", "--port", str(port), "--memory", cwd=tmp_path)
        line = assert_one_error_line(result, 1)
        assert f"127.0.0.1:{port}" in line and "in use" in line


def test_usage_and_configuration_mistakes_exit_2_in_one_line(tmp_path: Path) -> None:
    line = assert_one_error_line(relay("serve", "--no-such-flag", cwd=tmp_path), 2)
    assert "--no-such-flag" in line
    line = assert_one_error_line(relay("serve", "--port", "many", cwd=tmp_path), 2)
    assert "--port" in line
    line = assert_one_error_line(relay("serve", "--max-message-bytes", "0", cwd=tmp_path), 2)
    assert "max_message_bytes" in line
    line = assert_one_error_line(relay("serve", cwd=tmp_path, RELAY_PORT="x"), 2)
    assert "RELAY_PORT" in line


def test_non_loopback_host_without_auth_is_refused(tmp_path: Path) -> None:
    for host_args, env in (
        (("--host", "0.0.0.0"), {}),
        ((), {"RELAY_HOST": "0.0.0.0"}),
        (("--host", ""), {}),
    ):
        result = relay("serve", "--port", "0", "--memory", *host_args, cwd=tmp_path, **env)
        line = assert_one_error_line(result, 2)
        assert "without token auth" in line and "--insecure-no-auth" in line


def test_loopback_test_knows_addresses_and_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.3.4.5")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")
    assert not is_loopback("192.0.2.7") and not is_loopback("2001:db8::1")


# --- where it listens ---------------------------------------------------------------------------


def test_without_auth_it_listens_on_loopback_by_default(tmp_path: Path) -> None:
    with serving("--memory", cwd=tmp_path) as (match, stderr):
        assert match.group(2) == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", int(match.group(3))), timeout=5):
            pass
    assert any("WARNING relay: token auth is off" in line for line in stderr)


def test_wildcard_bind_prints_the_bound_address_and_says_so(tmp_path: Path) -> None:
    with serving("--memory", "--host", "0.0.0.0", "--insecure-no-auth", cwd=tmp_path) as (
        match,
        stderr,
    ):
        assert match.group(2) == "0.0.0.0"
    assert any("every interface of this machine (0.0.0.0)" in line for line in stderr)
    assert any("reachable from other hosts" in line for line in stderr)


def test_with_token_auth_it_listens_on_every_interface_by_default(tmp_path: Path) -> None:
    with serving("--memory", cwd=tmp_path, RELAY_AUTH_SECRET=SECRET) as (match, stderr):
        assert match.group(2) == "0.0.0.0"
    assert not any("token auth is off" in line for line in stderr)
    assert not any(SECRET in line for line in stderr)


# --- the store's files --------------------------------------------------------------------------


def test_store_files_are_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    with serving("--db", str(db), cwd=tmp_path):
        files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("relay.db"))
        # WAL mode: the write-ahead log and its index exist while the store is open
        assert files == ["relay.db", "relay.db-shm", "relay.db-wal"]
        for name in files:
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
    # an existing file keeps the permissions its owner chose
    db.chmod(0o640)
    with serving("--db", str(db), cwd=tmp_path):
        assert stat.S_IMODE(db.stat().st_mode) == 0o640


# --- environment, version, help -----------------------------------------------------------------


def test_unknown_relay_variables_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    result = relay(
        "serve", "--max-message-bytes", "0", cwd=tmp_path, RELAY_PROT="9000", RELAY_ZZZ="1"
    )
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "relay: warning: RELAY_PROT is not a relay setting; it is ignored "
        "(did you mean RELAY_PORT?)",
        "relay: warning: RELAY_ZZZ is not a relay setting; it is ignored",
    ]
    assert lines[2].startswith("relay: error: ") and len(lines) == 3
    # the settings' own variables and the others relay reads are not warned about
    known = {"RELAY_MAX_TEXT_CHARS": "5", "RELAY_PURE": "1", "RELAY_TOKEN": "t", "PORT": "1"}
    assert list(unknown_variables(known)) == []
    assert [w.split()[2] for w in unknown_variables({"RELAY_MAX_TXT_CHARS": "5"})] == [
        "RELAY_MAX_TXT_CHARS"
    ]
    assert "RELAY_MAX_TEXT_CHARS?" in next(iter(unknown_variables({"RELAY_MAX_TXT_CHARS": "5"})))


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = relay("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"relay {version('trio-relay')}"


def test_serve_help_explains_every_flag_in_words() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    dests = {a.dest for a in flags}
    assert {f.name for f in attrs.fields(RelayConfig)} <= dests
    for action in flags:
        words = (action.help or "").split("(env")[0]
        # more than the setting's own name: what it does
        assert len(words.split()) >= 4, (action.option_strings, action.help)
    text = serve.format_help()
    assert "--insecure-no-auth" in text and "127.0.0.1" in text


# --- packaging ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_holds_relay_and_its_compiled_fast_path_only(tmp_path: Path) -> None:
    """Built from the tracked files, as `pip install .` builds it (13 s: the compile)."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    source = tmp_path / "src"
    for name in filter(None, tracked):
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name.decode(), target)
    out = tmp_path / "wheel"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip_wheel, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("trio_relay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"relay"}, tops
    assert any(re.fullmatch(r"relay/_fastpath\..*\.so", n) for n in names), names
    assert "relay/web/index.html" in names and "relay/py.typed" in names
