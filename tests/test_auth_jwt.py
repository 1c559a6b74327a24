"""Token (JWT) authentication: contract v1 "Failure: error `auth_failed`, then close 1008. With
token auth on, the token's subject must equal `userId`."

Real relays on 127.0.0.1 (tests/support.py) and real clients (trio-websocket, RelayClient, the
`relay` command); JwtAuthenticator and the config checks also without sockets.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from support import start_relay, ws_connect
from trio_websocket import ConnectionClosed

from relay.auth import JwtAuthenticator, TrustingAuthenticator, authenticator_from_config
from relay.cli import build_parser, config_from
from relay.client import ConnectionLost, RelayClient
from relay.client.chat import _parser as chat_parser
from relay.config import RelayConfig
from relay.errors import ConfigError, FrameError, RelayError
from relay.protocol import AuthFrame

ROOT = Path(__file__).parent.parent
WAIT = 5.0
SECRET = "relay-test-secret-" + "k" * 46  # 64 bytes: long enough for HS512 too
OTHER_SECRET = "another-secret-" + "x" * 49
ISSUER = "https://id.example.test"
AUDIENCE = "relay"


def mint(key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    """A token for alice valid for 5 minutes; a claim given as None is left out."""
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 300, "iat": now, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed_hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token signed with `secret` by hand: PyJWT refuses to use a PEM key as an HMAC
    secret, which is exactly the forgery a relay with a public key must refuse."""
    head = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64(orjson.dumps(claims))
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token (no signature)."""
    return f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{_b64(orjson.dumps(claims))}."


def public_pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def private_pem(private: Any) -> bytes:
    return bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def try_auth(url: str, **fields: Any) -> tuple[dict[str, Any], int | None]:
    """The relay's answer to one `auth` frame for alice, and the close code that followed
    (None after auth_ok)."""
    async with ws_connect(url) as ws:
        frame = {"type": "auth", "userId": "alice", "userName": "Alice", **fields}
        await ws.send_message(orjson.dumps(frame).decode())
        with trio.fail_after(WAIT):
            answer: dict[str, Any] = orjson.loads(await ws.get_message())
            if answer["type"] == "auth_ok":
                return answer, None
            try:
                extra = await ws.get_message()
            except ConnectionClosed as exc:
                return answer, exc.reason.code
            raise AssertionError(f"the relay went on after {answer!r}: {extra!r}")


def assert_refused(answer: dict[str, Any], code: int | None, why: str) -> None:
    assert answer["type"] == "error", answer
    assert (answer["code"], answer.get("field")) == ("auth_failed", "token"), answer
    assert why in answer["message"], answer
    assert code == 1008


# --- a relay with an HMAC secret, issuer and audience ------------------------------------------


def _in(seconds: int) -> int:
    return int(time.time()) + seconds


# Tokens are minted when a test runs (not at collection): each is bad for one reason only.
HMAC_REFUSALS: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("expired", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, exp=_in(-60))}, "token expired"),
    ("not yet valid", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, nbf=_in(600))}, "not yet valid"),
    ("issued in the future", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, iat=_in(600))}, "not yet valid"),
    ("wrong secret", lambda: {"token": mint(OTHER_SECRET, iss=ISSUER, aud=AUDIENCE)}, "bad token signature"),
    ("alg none", lambda: {"token": unsigned({"sub": "alice", "exp": _in(600), "iss": ISSUER, "aud": AUDIENCE})}, "algorithm not allowed"),
    ("HS512, not allowed", lambda: {"token": mint(alg="HS512", iss=ISSUER, aud=AUDIENCE)}, "algorithm not allowed"),
    ("subject is another user", lambda: {"token": mint(sub="bob", iss=ISSUER, aud=AUDIENCE)}, "subject does not match userId"),
    ("no subject", lambda: {"token": mint(sub=None, iss=ISSUER, aud=AUDIENCE)}, "no 'sub' claim"),
    ("no expiry", lambda: {"token": mint(exp=None, iss=ISSUER, aud=AUDIENCE)}, "no 'exp' claim"),
    ("no token", lambda: {}, "token required"),
    ("empty token", lambda: {"token": ""}, "token required"),
    ("not a JWT", lambda: {"token": "not.a.jwt"}, "malformed token"),
    ("wrong issuer", lambda: {"token": mint(iss="https://evil.example", aud=AUDIENCE)}, "wrong token issuer"),
    ("no issuer", lambda: {"token": mint(aud=AUDIENCE)}, "no 'iss' claim"),
    ("wrong audience", lambda: {"token": mint(iss=ISSUER, aud="another-service")}, "wrong token audience"),
    ("no audience", lambda: {"token": mint(iss=ISSUER)}, "no 'aud' claim"),
    ("lives 25 h", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, exp=_in(25 * 3600))}, "token lifetime exceeds"),
    ("lives 25 h, no iat", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, iat=None, exp=_in(25 * 3600))}, "token lifetime exceeds"),
    ("issued long ago, lives a year", lambda: {"token": mint(iss=ISSUER, aud=AUDIENCE, iat=_in(-86400), exp=_in(365 * 86400))}, "token lifetime exceeds"),
]  # fmt: skip


@pytest.fixture
async def hmac_relay(nursery: trio.Nursery) -> str:
    relay = await start_relay(
        nursery, auth_secret=SECRET, auth_issuer=ISSUER, auth_audience=AUDIENCE
    )
    return relay.url


async def test_a_valid_token_opens_the_session(hmac_relay: str) -> None:
    answer, code = await try_auth(hmac_relay, token=mint(iss=ISSUER, aud=AUDIENCE))
    assert (answer["type"], answer["userId"], code) == ("auth_ok", "alice", None)


async def test_expiry_within_the_leeway_is_accepted(hmac_relay: str) -> None:
    expired_5s_ago = mint(iss=ISSUER, aud=AUDIENCE, exp=int(time.time()) - 5)  # leeway 10 s
    answer, _ = await try_auth(hmac_relay, token=expired_5s_ago)
    assert answer["type"] == "auth_ok", answer


@pytest.mark.parametrize(
    "fields,why", [c[1:] for c in HMAC_REFUSALS], ids=[c[0] for c in HMAC_REFUSALS]
)
async def test_a_bad_token_is_refused_with_auth_failed_and_1008(
    hmac_relay: str, fields: Callable[[], dict[str, Any]], why: str
) -> None:
    answer, code = await try_auth(hmac_relay, **fields())
    assert_refused(answer, code, why)


async def test_a_refused_connection_cannot_send_anything(hmac_relay: str) -> None:
    # The relay closes after auth_failed: a message sent right behind the auth goes nowhere.
    async with ws_connect(hmac_relay) as ws:
        auth = {
            "type": "auth",
            "userId": "alice",
            "token": mint(sub="bob", iss=ISSUER, aud=AUDIENCE),
        }
        message = {"type": "message", "id": "m1", "recipientId": "bob", "text": "hi"}
        await ws.send_message(orjson.dumps(auth).decode())
        await ws.send_message(orjson.dumps(message).decode())
        with trio.fail_after(WAIT):
            assert orjson.loads(await ws.get_message())["code"] == "auth_failed"
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1008


# --- a relay with a public key -----------------------------------------------------------------


async def test_a_public_key_relay_accepts_its_keys_tokens_and_no_forgery(
    nursery: trio.Nursery, tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: Any
) -> None:
    pem = public_pem(rsa_key)
    (tmp_path / "key.pem").write_bytes(pem)
    relay = await start_relay(nursery, auth_public_key_file=str(tmp_path / "key.pem"))
    answer, code = await try_auth(relay.url, token=mint(rsa_key, "RS256"))
    assert (answer["type"], code) == ("auth_ok", None), answer
    claims = {"sub": "alice", "exp": int(time.time()) + 300}
    refusals = [
        (hand_signed_hs256(pem, claims), "algorithm not allowed"),  # the public key as HMAC secret
        (mint(SECRET, "HS256"), "algorithm not allowed"),
        (unsigned(claims), "algorithm not allowed"),
        (mint(rsa_key, "PS256"), "algorithm not allowed"),  # same key, algorithm not configured
        (mint(other_rsa_key, "RS256"), "bad token signature"),
        (mint(rsa_key, "RS256", sub="bob"), "subject does not match userId"),
        (mint(rsa_key, "RS256", exp=int(time.time()) - 60), "token expired"),
    ]
    for token, why in refusals:
        answer, code = await try_auth(relay.url, token=token)
        assert_refused(answer, code, why)


@pytest.mark.parametrize(
    "make,alg",
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
    ids=["P-256", "P-384", "Ed25519"],
)
async def test_each_key_type_verifies_with_its_own_algorithm(
    nursery: trio.Nursery, tmp_path: Path, make: Any, alg: str
) -> None:
    key = make()
    (tmp_path / "key.pem").write_bytes(public_pem(key))
    relay = await start_relay(nursery, auth_public_key_file=str(tmp_path / "key.pem"))
    answer, _ = await try_auth(relay.url, token=mint(key, alg))
    assert answer["type"] == "auth_ok", answer
    answer, code = await try_auth(relay.url, token=mint(make(), alg))  # another key, same kind
    assert_refused(answer, code, "bad token signature")


async def test_without_token_auth_the_relay_trusts_user_id(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    answer, _ = await try_auth(relay.url)
    assert answer["type"] == "auth_ok"


# --- the client library ------------------------------------------------------------------------


async def test_relay_client_sends_its_token(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, auth_secret=SECRET)
    client = RelayClient(relay.url, user_id="alice", token=mint(), reconnect_delay=0.05)
    async with client:
        with trio.fail_after(WAIT):
            await client.wait_online()
    expired = RelayClient(relay.url, user_id="alice", token=mint(exp=int(time.time()) - 60))
    async with expired:
        with trio.fail_after(WAIT), pytest.raises(ConnectionLost, match="token expired"):
            await expired.wait_online()


def test_relay_chat_reads_its_token_from_relay_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TOKEN", "from-env")
    assert chat_parser().parse_args(["--user", "a"]).token == "from-env"
    assert chat_parser().parse_args(["--user", "a", "--token", "flag"]).token == "flag"
    monkeypatch.delenv("RELAY_TOKEN")
    assert chat_parser().parse_args(["--user", "a"]).token is None


async def test_relay_chat_signs_in_with_relay_token(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, auth_secret=SECRET)
    for token, expected in (
        (mint(), "* online as alice"),
        (mint(sub="bob"), "* disconnected: auth_failed: token subject does not match userId"),
    ):
        lines = await _chat_until(relay.url, token, expected)
        assert any(expected in line for line in lines), lines
        assert token not in "\n".join(lines)


async def _chat_until(url: str, token: str, expected: str) -> list[str]:
    """Run `relay chat` as alice with RELAY_TOKEN=token until it prints `expected`; its lines."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", "chat", "--url", url, "--user", "alice",
         "--reconnect-delay", "0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**_environ(), "RELAY_TOKEN": token},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    buffer = b""
    try:
        with trio.move_on_after(30):
            async for chunk in proc.stdout:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in complete]
                if any(expected in line for line in lines):
                    break
        await proc.stdin.aclose()
        with trio.fail_after(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    return lines


def _environ() -> dict[str, str]:
    """This process's environment without token settings (RELAY_PURE and the like stay)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_AUTH_", "RELAY_TOKEN"))}


# --- JwtAuthenticator without sockets ----------------------------------------------------------


async def test_jwt_authenticator_unit() -> None:
    auth = JwtAuthenticator.from_secret(SECRET, issuer=ISSUER, leeway=0)
    assert await auth.authenticate(AuthFrame(user_id="alice", token=mint(iss=ISSUER))) == "alice"
    claims = auth.verify(mint(iss=ISSUER, role="admin"), "alice")
    assert claims["role"] == "admin"
    cases = [
        (mint(iss=ISSUER, exp=int(time.time()) - 1), "token expired"),  # no leeway here
        (mint(iss=ISSUER, sub="bob"), "subject does not match userId"),
        (mint(iss=ISSUER, sub=7), "invalid token"),  # a subject that is no string
        (mint(iss=ISSUER, aud="x"), "names an audience"),  # none configured: refused
        (None, "token required"),
    ]
    for token, why in cases:
        with pytest.raises(FrameError) as info:
            await auth.authenticate(AuthFrame(user_id="alice", token=token))
        assert (info.value.code, info.value.field) == ("auth_failed", "token")
        assert why in info.value.message
        assert SECRET not in info.value.message and (token or "@") not in info.value.message


def test_a_token_lives_at_most_the_maximum_lifetime() -> None:
    day = 86400
    now = int(time.time())
    auth = JwtAuthenticator.from_secret(SECRET)  # 24 h by default, from iat to exp
    assert auth.max_lifetime == day
    assert auth.verify(mint(iat=now, exp=now + day), "alice")["sub"] == "alice"
    # without iat, from now (give or take the leeway) to exp
    assert auth.verify(mint(iat=None, exp=now + day - 60), "alice")["sub"] == "alice"
    refused = [
        mint(iat=now, exp=now + day + 1),
        mint(iat=None, exp=now + day + 3600),
        mint(iat=now - 2 * day, exp=now + 60),  # still valid, but minted to live two days
        mint(iat=now, exp=10**30),  # "exp" as far as a number goes
    ]
    for token in refused:
        with pytest.raises(FrameError) as info:
            auth.verify(token, "alice")
        assert (info.value.code, info.value.field) == ("auth_failed", "token")
        assert info.value.message.startswith("token lifetime exceeds the relay's maximum (86400 s")
    unlimited = JwtAuthenticator.from_secret(SECRET, max_lifetime=0)
    for token in refused:
        assert unlimited.verify(token, "alice")["sub"] == "alice"
    assert "at most" not in unlimited.describe() and "86400 s" in auth.describe()
    shorter = authenticator_from_config(RelayConfig(auth_secret=SECRET, auth_max_token_lifetime=60))
    assert isinstance(shorter, JwtAuthenticator) and shorter.max_lifetime == 60
    with pytest.raises(FrameError, match="lifetime"):
        shorter.verify(mint(), "alice")  # mint(): five minutes


def test_the_secret_is_in_no_repr_message_or_description() -> None:
    config = RelayConfig(auth_secret=SECRET)
    auth = authenticator_from_config(config)
    assert isinstance(auth, JwtAuthenticator)
    for text in (repr(config), str(config), repr(auth), auth.describe()):
        assert SECRET not in text and "relay-test-secret" not in text
    short = "short-secret-that-must-not-leak"
    with pytest.raises(ConfigError, match="too short") as info:
        authenticator_from_config(RelayConfig(auth_secret=short))
    assert short not in str(info.value)


def test_no_key_means_the_trusting_authenticator() -> None:
    assert isinstance(authenticator_from_config(RelayConfig()), TrustingAuthenticator)
    assert not RelayConfig().token_auth and RelayConfig(auth_secret=SECRET).token_auth


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "settings,why",
    [
        ({"auth_secret": SECRET, "auth_public_key_file": "k.pem"}, "one key source"),
        ({"auth_secret": SECRET, "auth_secret_file": "s"}, "one key source"),
        ({"auth_issuer": ISSUER}, "auth_issuer needs token auth"),
        ({"auth_audience": AUDIENCE}, "auth_audience needs token auth"),
        ({"auth_algorithms": "HS256"}, "auth_algorithms needs token auth"),
        ({"auth_secret": ""}, "auth_secret is set but empty"),
        ({"auth_secret": SECRET, "auth_leeway": -1.0}, "auth_leeway must be >= 0"),
        (
            {"auth_secret": SECRET, "auth_max_token_lifetime": -1.0},
            "auth_max_token_lifetime must be >= 0",
        ),
    ],
)
def test_inconsistent_auth_settings_are_a_config_error(settings: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        RelayConfig(**settings)


def test_bad_key_material_is_a_config_error(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"auth_public_key_file": str(tmp_path / "missing.pem")}, "cannot read"),
        ({"auth_secret_file": str(tmp_path / "missing")}, "cannot read"),
        ({"auth_secret_file": _write(tmp_path / "empty", b"\n")}, "is empty"),
        ({"auth_public_key_file": _write(tmp_path / "priv.pem", private_pem(rsa_key))}, "private key"),
        ({"auth_public_key_file": _write(tmp_path / "junk.pem", b"hello")}, "not a PEM"),
        ({"auth_public_key_file": _write(tmp_path / "weak.pem", public_pem(weak_rsa))}, "at least 2048"),
        ({"auth_secret": "x" * 31}, "too short"),
        ({"auth_secret": "x" * 32, "auth_algorithms": "HS256,HS512"}, "too short"),
        ({"auth_secret": SECRET, "auth_algorithms": "RS256"}, "cannot be used with an HMAC secret"),
        ({"auth_secret": SECRET, "auth_algorithms": "none"}, "cannot be used"),
        ({"auth_secret": SECRET, "auth_algorithms": " , "}, "names no algorithm"),
        ({"auth_public_key_file": _write(tmp_path / "rsa.pem", public_pem(rsa_key)), "auth_algorithms": "HS256"}, "cannot be used with this public key"),
        ({"auth_public_key_file": _write(tmp_path / "p256.pem", public_pem(p256)), "auth_algorithms": "ES384"}, "cannot be used"),
    ]  # fmt: skip
    for settings, why in cases:
        with pytest.raises(ConfigError, match=why):
            authenticator_from_config(RelayConfig(**settings))


def test_a_certificate_and_a_secret_file_are_accepted(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    path = _write(tmp_path / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    auth = authenticator_from_config(RelayConfig(auth_public_key_file=path))
    assert isinstance(auth, JwtAuthenticator) and auth.algorithms == ("RS256",)
    assert auth.verify(mint(rsa_key, "RS256"), "alice")["sub"] == "alice"
    path = _write(tmp_path / "secret", SECRET.encode() + b"\n")  # as `echo` writes it
    auth = authenticator_from_config(RelayConfig(auth_secret_file=path, auth_algorithms="HS512"))
    assert isinstance(auth, JwtAuthenticator)
    assert auth.verify(mint(alg="HS512"), "alice")["sub"] == "alice"


def test_an_authenticator_for_a_custom_handler_is_refused() -> None:
    from relay.app import Relay
    from relay.echo import EchoHandler

    with pytest.raises(RelayError, match="default handler"):
        Relay(RelayConfig(), handler=EchoHandler(), authenticator=TrustingAuthenticator())


# --- the `relay` command -----------------------------------------------------------------------


def test_auth_settings_from_flags_and_environment() -> None:
    parser = build_parser()
    env = {
        "RELAY_AUTH_SECRET": SECRET,
        "RELAY_AUTH_ISSUER": ISSUER,
        "RELAY_AUTH_AUDIENCE": AUDIENCE,
        "RELAY_AUTH_LEEWAY": "2.5",
        "RELAY_AUTH_ALGORITHMS": "HS256,HS384",
        "RELAY_AUTH_MAX_TOKEN_LIFETIME": "3600",
    }
    config = config_from(parser.parse_args(["serve"]), env)
    auth = authenticator_from_config(config)
    assert isinstance(auth, JwtAuthenticator)
    assert (auth.algorithms, auth.issuer, auth.audience, auth.leeway, auth.max_lifetime) == (
        ("HS256", "HS384"), ISSUER, AUDIENCE, 2.5, 3600.0,
    )  # fmt: skip
    flags = ["serve", "--auth-max-token-lifetime", "0"]
    assert config_from(parser.parse_args(flags), env).auth_max_token_lifetime == 0.0
    config = config_from(parser.parse_args(["serve", "--auth-issuer", "flag-wins"]), env)
    assert config.auth_issuer == "flag-wins"
    # The secret is taken verbatim: "none" is a (too short) secret, it does not turn auth off.
    config = config_from(parser.parse_args(["serve"]), {"RELAY_AUTH_SECRET": "none"})
    assert config.auth_secret == "none"
    with pytest.raises(ConfigError, match="too short"):
        authenticator_from_config(config)
    with pytest.raises(ConfigError, match="empty"):
        config_from(parser.parse_args(["serve"]), {"RELAY_AUTH_SECRET": ""})


def test_relay_serve_refuses_bad_auth_settings_without_echoing_the_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--memory",
         "--auth-public-key-file", str(tmp_path / "missing.pem")],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**_environ(), "RELAY_AUTH_SECRET": SECRET},
    )  # fmt: skip
    assert result.returncode == 2
    assert "one key source" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--memory",
         "--auth-public-key-file", str(tmp_path / "missing.pem")],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=_environ(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "auth_public_key_file: cannot read" in result.stderr


async def test_relay_serve_with_token_auth_from_the_environment(tmp_path: Path) -> None:
    secret_file = _write(tmp_path / "secret", SECRET.encode() + b"\n")
    process = _serve(["--auth-audience", AUDIENCE], {"RELAY_AUTH_SECRET_FILE": secret_file})
    try:
        url = await trio.to_thread.run_sync(_url_of, process)
        answer, _ = await try_auth(url, token=mint(aud=AUDIENCE))
        assert answer["type"] == "auth_ok", answer
        answer, code = await try_auth(url, token=mint(aud="elsewhere"))
        assert_refused(answer, code, "wrong token audience")
        answer, code = await try_auth(url)
        assert_refused(answer, code, "token required")
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=10)) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert "token auth on: algorithms HS256; audience 'relay'" in stderr
    assert "token auth is off" not in stderr
    assert SECRET not in stderr


async def test_relay_serve_without_token_auth_warns() -> None:
    process = _serve([], {})
    try:
        await trio.to_thread.run_sync(_url_of, process)
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=10)) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert "WARNING relay: token auth is off" in stderr


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m relay serve` on a free loopback port, in memory, with `args` and `env`."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0",
         "--memory", *args],
        cwd=ROOT,
        env={**_environ(), "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _url_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "WebSocket server running on " in line:
            return line.rsplit(" ", 1)[1].strip()
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"no URL line; stderr: {process.communicate()[1]}")
