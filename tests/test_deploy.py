"""deploy/: the systemd unit parses (systemd-analyze verify, when installed) and its
environment file names only settings the relay reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.cli import OTHER_VARIABLES, _settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_environment_file_names_only_relay_settings() -> None:
    known = {s.env for s in _settings()} | set(OTHER_VARIABLES) | {"PORT"}
    text = (DEPLOY / "relay.env.example").read_text()
    named = set(re.findall(r"^#?(RELAY_[A-Z_]+|PORT)=", text, re.MULTILINE))
    assert "RELAY_AUTH_SECRET" in named
    assert named <= known, named - known


def test_unit_is_notify_and_hardened() -> None:
    unit = (DEPLOY / "relay.service").read_text()
    lines = set(unit.splitlines())
    for line in (
        "Type=notify",
        # the one-file binary's relay is a child of the bootloader systemd starts
        "NotifyAccess=all",
        "KillMode=mixed",
        "EnvironmentFile=-/etc/relay/relay.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=relay",
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
    ):
        assert line in lines, line
    families = re.search(r"^RestrictAddressFamilies=(.*)$", unit, re.MULTILINE)
    # AF_UNIX carries the notification datagram (relay.notify)
    assert families is not None and set(families.group(1).split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: the binary is not built by the unit tests
    unit = (DEPLOY / "relay.service").read_text()
    unit = unit.replace("ExecStart=/usr/local/bin/relay", "ExecStart=/bin/true", 1)
    (tmp_path / "relay.service").write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "relay.service")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # it exits 0 after a directive it cannot parse, so silence is the check
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
