"""Authentication of the `auth` frame.

An Authenticator returns the user id the connection acts as, or raises
FrameError("auth_failed", ...) (the core then sends the error and closes with 1008).

Two authenticators:
- TrustingAuthenticator (token auth off, the default): trusts the frame's `userId`.
- JwtAuthenticator (token auth on): the frame's `token` must be a JWT signed with the
  configured key, within its validity (`exp` required, `nbf`/`iat` honoured, `auth_leeway`
  seconds of clock skew), with the configured `iss` / `aud` when set, with `sub` equal
  to `userId`, and living at most `max_lifetime` seconds (`auth_max_token_lifetime`; 0: no
  maximum): from its `iat` to its `exp`, or, without `iat`, from now to its `exp` (give or
  take the leeway). A stolen token is only as useful as its remaining life; a long-lived
  token is refused rather than trusted for months.

Invariants of JwtAuthenticator:
- The accepted algorithms are fixed by the configuration, never by the token: all HMAC
  (HS*) with a secret, or all of the public key's own family (RS*/PS* for RSA, the curve's
  ES* for EC, EdDSA for Ed25519/Ed448) with a public key. `none` is never accepted, and a
  token cannot make the relay use a public key as an HMAC secret.
- An HMAC secret is at least as long as its hash (RFC 7518 §3.2: 32 bytes for HS256).
- A public key is a PEM public key or X.509 certificate; a private key is refused (the relay
  only verifies, it never needs what mints tokens).
- Neither the secret nor a token appears in a message, an error or repr().

PyJWT's [crypto] extra (`cryptography`) is a dependency so that the relay can verify the
RS256/ES256 tokens an identity provider issues, holding only its public key.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import jwt
from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from relay.errors import ConfigError, FrameError
from relay.protocol import AuthFrame

if TYPE_CHECKING:
    from relay.config import RelayConfig

#: HMAC algorithms and the shortest secret (bytes) each accepts: its hash length.
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: EC algorithms and the curve each is defined on (RFC 7518 §3.4).
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
EDDSA_ALGORITHMS = ("EdDSA",)

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class Authenticator(Protocol):
    async def authenticate(self, frame: AuthFrame) -> str:
        """The user id for this auth frame, or raise FrameError with code `auth_failed`."""
        ...


class TrustingAuthenticator:
    """Token auth off: trusts the frame's `userId` (no token check). For development and closed
    networks only; `relay serve` warns at startup when it runs with this one."""

    async def authenticate(self, frame: AuthFrame) -> str:
        return frame.user_id


class AuthRefused(FrameError):
    """A refused token: FrameError `auth_failed` with `reason`, one word of a fixed set for the
    logs and the relay_auth_failures_total metric (never the token, nor any of its text)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__("auth_failed", message, field="token")
        self.reason = reason


def _refuse(message: str, reason: str = "invalid_token") -> FrameError:
    return AuthRefused(reason, message)


def _algorithms_for(key: bytes | PublicKey) -> tuple[str, ...]:
    """The algorithms `key` may verify: one family, chosen by the key's type."""
    if isinstance(key, bytes):
        return tuple(HMAC_ALGORITHMS)
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return tuple(a for a, curve in EC_ALGORITHMS.items() if curve == key.curve.name)
    return EDDSA_ALGORITHMS


def _default_algorithms(key: bytes | PublicKey) -> tuple[str, ...]:
    if isinstance(key, bytes):
        return ("HS256",)
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256",)
    return _algorithms_for(key)  # the curve's one ES* algorithm, or EdDSA


def parse_algorithms(text: str) -> tuple[str, ...]:
    """`"RS256, PS256"` -> ("RS256", "PS256"); names are case-sensitive as in JWS."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("auth_algorithms names no algorithm")
    return names


def _algorithm_names(algorithms: str | Iterable[str]) -> tuple[str, ...]:
    return parse_algorithms(algorithms) if isinstance(algorithms, str) else tuple(algorithms)


@frozen
class JwtAuthenticator:
    """Token auth: see the module docstring. Build it with `from_secret`, `from_public_key`
    or `from_config`; the constructor checks the key against the algorithms."""

    key: bytes | PublicKey = field(repr=False)
    algorithms: tuple[str, ...]
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 10.0
    max_lifetime: float = 86400.0  # seconds; 0: no maximum

    def __attrs_post_init__(self) -> None:
        if not self.algorithms:
            raise ConfigError("token auth needs at least one algorithm")
        allowed = _algorithms_for(self.key)
        wrong = [a for a in self.algorithms if a not in allowed]
        if wrong:
            kind = "an HMAC secret" if isinstance(self.key, bytes) else "this public key"
            raise ConfigError(
                f"auth_algorithms: {', '.join(wrong)} cannot be used with {kind} "
                f"(it takes {', '.join(allowed) or 'no JWS algorithm'})"
            )
        if isinstance(self.key, bytes):
            need = max(HMAC_ALGORITHMS[a] for a in self.algorithms)
            if len(self.key) < need:
                raise ConfigError(
                    f"the auth secret is too short for {', '.join(self.algorithms)}: "
                    f"{len(self.key)} bytes, at least {need} needed"
                )
        if self.leeway < 0:
            raise ConfigError(f"auth_leeway must be >= 0, got {self.leeway!r}")
        if self.max_lifetime < 0:
            raise ConfigError(f"auth_max_token_lifetime must be >= 0, got {self.max_lifetime!r}")

    @classmethod
    def from_secret(
        cls,
        secret: str | bytes,
        *,
        algorithms: str | Iterable[str] = ("HS256",),
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 10.0,
        max_lifetime: float = 86400.0,
    ) -> JwtAuthenticator:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        return cls(key, _algorithm_names(algorithms), issuer, audience, leeway, max_lifetime)

    @classmethod
    def from_public_key(
        cls,
        pem: bytes,
        *,
        algorithms: str | Iterable[str] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 10.0,
        max_lifetime: float = 86400.0,
    ) -> JwtAuthenticator:
        """`pem`: a PEM public key or X.509 certificate. `algorithms` default to the key's
        own: RS256 for RSA, ES256/ES384/ES512 by curve for EC, EdDSA for Ed25519/Ed448."""
        key = load_public_key(pem)
        chosen = _default_algorithms(key) if algorithms is None else _algorithm_names(algorithms)
        return cls(key, chosen, issuer, audience, leeway, max_lifetime)

    @classmethod
    def from_config(cls, config: RelayConfig) -> JwtAuthenticator | None:
        """The authenticator `config` asks for, None when token auth is off. Reads the key
        file; raises ConfigError when a file cannot be read or the key does not fit."""
        algorithms = (
            None if config.auth_algorithms is None else parse_algorithms(config.auth_algorithms)
        )
        checks: dict[str, Any] = {
            "issuer": config.auth_issuer,
            "audience": config.auth_audience,
            "leeway": config.auth_leeway,
            "max_lifetime": config.auth_max_token_lifetime,
        }
        if config.auth_public_key_file is not None:
            pem = _read("auth_public_key_file", config.auth_public_key_file)
            return cls.from_public_key(pem, algorithms=algorithms, **checks)
        if config.auth_secret_file is not None:
            secret = _read("auth_secret_file", config.auth_secret_file).rstrip(b"\r\n")
            if not secret:
                raise ConfigError(f"auth_secret_file {config.auth_secret_file} is empty")
        elif config.auth_secret is not None:
            secret = config.auth_secret.encode()
        else:
            return None
        return cls.from_secret(secret, algorithms=algorithms or ("HS256",), **checks)

    def describe(self) -> str:
        """One line for the startup log (never the key)."""
        parts = [f"algorithms {', '.join(self.algorithms)}"]
        if self.issuer is not None:
            parts.append(f"issuer {self.issuer!r}")
        if self.audience is not None:
            parts.append(f"audience {self.audience!r}")
        parts.append(f"leeway {self.leeway:g} s")
        if self.max_lifetime:
            parts.append(f"tokens living at most {self.max_lifetime:g} s")
        return "; ".join(parts)

    def verify(self, token: str | None, user_id: str) -> dict[str, Any]:
        """The claims of `token` when it is valid for `user_id`; else FrameError auth_failed
        with a message that says why (and never repeats the token)."""
        if not token:
            raise _refuse("token required", "token_missing")
        required = ["exp", "sub"]
        if self.issuer is not None:
            required.append("iss")
        if self.audience is not None:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("token expired", "token_expired") from None
        except jwt.ImmatureSignatureError:
            raise _refuse("token not yet valid", "token_not_yet_valid") from None
        except jwt.InvalidAlgorithmError:
            raise _refuse(
                f"token algorithm not allowed (the relay accepts {', '.join(self.algorithms)})",
                "algorithm_not_allowed",
            ) from None
        except jwt.InvalidSignatureError:
            raise _refuse("bad token signature", "bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"token has no '{exc.claim}' claim", "missing_claim") from None
        except jwt.InvalidIssuerError:
            raise _refuse("wrong token issuer", "wrong_issuer") from None
        except jwt.InvalidAudienceError:
            if self.audience is None:
                raise _refuse(
                    "token names an audience and the relay has none configured", "wrong_audience"
                ) from None
            raise _refuse("wrong token audience", "wrong_audience") from None
        except jwt.DecodeError:
            raise _refuse("malformed token", "malformed_token") from None
        except jwt.PyJWTError as exc:  # any other invalid claim (iat, sub type, ...)
            raise _refuse(f"invalid token ({type(exc).__name__})") from None
        if self.max_lifetime and self._too_long_lived(claims):
            raise _refuse(
                f"token lifetime exceeds the relay's maximum ({self.max_lifetime:g} s from "
                "'iat', or from now without it, to 'exp')",
                "token_too_long_lived",
            )
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise _refuse("token subject ('sub') must be a string", "wrong_subject")
        if subject != user_id:
            raise _refuse("token subject does not match userId", "wrong_subject")
        return claims

    def _too_long_lived(self, claims: dict[str, Any]) -> bool:
        """Whether the token's `exp` lies more than max_lifetime after its `iat` (or after now,
        give or take the leeway, when it has none). jwt.decode read both as int() already."""
        expires = int(claims["exp"])
        if "iat" in claims:
            return expires - int(claims["iat"]) > self.max_lifetime
        return expires - time.time() > self.max_lifetime + self.leeway

    async def authenticate(self, frame: AuthFrame) -> str:
        self.verify(frame.token, frame.user_id)
        return frame.user_id


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo or PKCS#1 RSA) or X.509 certificate's key."""
    if b"PRIVATE KEY" in pem:
        raise ConfigError(
            "auth_public_key_file holds a private key: give the relay the public key only"
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(
            f"auth_public_key_file is not a PEM public key or certificate: {exc}"
        ) from None
    if not isinstance(key, PublicKey):
        raise ConfigError(f"auth_public_key_file: unsupported key type {type(key).__name__}")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in EC_ALGORITHMS.values():
        raise ConfigError(f"auth_public_key_file: unsupported EC curve {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ConfigError(
            f"auth_public_key_file: RSA key of {key.key_size} bits, at least 2048 needed"
        )
    return key


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def authenticator_from_config(config: RelayConfig) -> Authenticator:
    """JwtAuthenticator when `config` turns token auth on, else TrustingAuthenticator."""
    token_auth = JwtAuthenticator.from_config(config)
    return TrustingAuthenticator() if token_auth is None else token_auth
