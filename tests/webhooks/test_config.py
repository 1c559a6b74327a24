"""Webhook settings: refused when inconsistent, before anything starts (relay serve exits 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import main
from relay.config import RelayConfig
from relay.errors import ConfigError


def test_the_defaults_are_the_contracts() -> None:
    config = RelayConfig()
    assert config.webhook_url is None
    assert (config.webhook_delay, config.webhook_max_age) == (2.0, 86400.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"webhook_url": "https://example.com/hooks"}, "needs webhook_secret_file"),
        ({"webhook_secret_file": "/s"}, "webhook_secret_file needs webhook_url"),
        ({"webhook_url": "ftp://example.com/", "webhook_secret_file": "/s"}, "http:// or https://"),
        ({"webhook_url": "http://", "webhook_secret_file": "/s"}, "http:// or https://"),
        ({"webhook_delay": -1.0}, "webhook_delay must be >= 0"),
        ({"webhook_max_pending": 0}, "webhook_max_pending must be > 0"),
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig(**settings)  # type: ignore[arg-type]


def test_relay_serve_refuses_an_unreadable_secret_file_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.secret"
    status = main(
        ["serve", "--port", "0", "--memory", "--webhook-url", "http://127.0.0.1:9/h",
         "--webhook-secret-file", str(missing)]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("relay: error: webhook_secret_file") and "nope.secret" in err
    assert "Traceback" not in err


def test_relay_serve_refuses_a_webhook_url_without_a_secret_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["serve", "--port", "0", "--memory", "--webhook-url", "http://127.0.0.1:9/h"])
    assert status == 2
    assert "needs webhook_secret_file" in capsys.readouterr().err


async def test_webhooks_need_the_messaging_service(secret_file: str) -> None:
    from relay import Relay
    from relay.echo import EchoHandler

    config = RelayConfig(
        host="127.0.0.1", port=0, db_path=None,
        webhook_url="http://127.0.0.1:9/h", webhook_secret_file=secret_file,
    )  # fmt: skip
    relay = Relay(config, handler=EchoHandler())
    with pytest.raises(ConfigError, match="messaging service"):
        await relay.serve()
    assert relay.address is None  # refused before listening
