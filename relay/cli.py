"""The `relay` command: `relay serve` (the server) and `relay chat` (the terminal client).

Invariant: `relay serve` has one flag per RelayConfig field, derived from the attrs fields, so
a new setting is a flag (and a RELAY_<NAME> variable) without touching this module.
Precedence per setting: flag > RELAY_<NAME> > (port only: PORT) > the RelayConfig default.
Token auth is built from the config before anything starts (a bad key is a usage error, exit
2); without it `relay serve` logs a warning that it trusts every `userId`. The auth secret is
never printed: not in --help, not in an error, not in the config's repr.

Exposure: without token auth `relay serve` listens on 127.0.0.1 unless a host is given (flag or
RELAY_HOST), and refuses a host that is not loopback unless --insecure-no-auth is given: what
it would otherwise serve is every user's history to anyone who can reach the port. With token
auth the default host is 0.0.0.0.

Failures: every startup failure is one line on stderr, `relay: error: ...`, and exit status 2
(usage or configuration) or 1 (the store, the listening socket, the TLS files); no traceback.
Errors that are neither a RelayError nor an OSError are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib.metadata
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Union, get_args, get_origin

import attrs

from relay import logs
from relay.auth import Authenticator, JwtAuthenticator, authenticator_from_config
from relay.config import RelayConfig
from relay.errors import ConfigError, RelayError
from relay.logs import LOG_FORMATS
from relay.rlimit import raise_descriptor_limit

if TYPE_CHECKING:
    from relay.app import Relay

log = logging.getLogger("relay")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"", "none", "null"}
# Settings with their own spelling on the command line.
_SPECIAL = {"db_path"}
# Secrets: taken verbatim (no `none` spelling turns token auth off; empty is refused by
# RelayConfig), never shown in --help defaults or in error messages.
_SECRET = {"auth_secret"}
_SECRET.add("api_keys")  # the HTTP API keys (relay.api)
#: The distribution relay is installed as (`relay` on PyPI is another project).
DISTRIBUTION = "trio-relay"
#: Hosts that mean "every interface of this machine".
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
#: RELAY_* variables read by something other than a RelayConfig field (not warned about).
OTHER_VARIABLES = {
    "RELAY_INSECURE_NO_AUTH": "relay serve --insecure-no-auth",
    "RELAY_TOKEN": "relay chat --token",
    "RELAY_PURE": "the pure-Python fast path (relay.fastpath)",
    "RELAY_REQUIRE_EXT": "setup.py: a failed compile is an error",
    "RELAY_SKIP_NODE": "tests: skip the Node.js interoperability tests",
    "RELAY_SKIP_BROWSER": "tests: skip the browser test",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `relay: error: ... (see relay serve --help)`, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"relay: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@attrs.frozen
class _Setting:
    """How one RelayConfig field is read from text (a flag value or an environment variable)."""

    name: str
    base: type
    optional: bool
    default: Any
    help: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "RELAY_" + self.name.upper()

    def parse(self, text: str) -> Any:
        if self.name in _SECRET:
            return text
        if self.optional and text.strip().lower() in _NONE:
            return None
        if self.base is bool:
            return _parse_bool(text)
        try:
            if self.base is int:
                return int(text)
            if self.base is float:
                return float(text)
        except ValueError:
            kind = "a whole number" if self.base is int else "a number"
            raise ValueError(f"expected {kind}, got {text!r}") from None
        return text


def _settings() -> list[_Setting]:
    hints = attrs.resolve_types(RelayConfig)
    out = []
    for f in attrs.fields(hints):
        tp: Any = f.type
        optional = False
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            optional = len(args) < len(get_args(tp))
            tp = args[0]
        out.append(_Setting(f.name, tp, optional, f.default, f.metadata.get("help")))
    return out


def _serve_parser(sub: argparse._SubParsersAction[Any]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the relay server",
        description="Run the relay. Every setting is also read from RELAY_<NAME> "
        "(e.g. RELAY_MAX_MESSAGE_BYTES); the port also from PORT. Flags win over the environment.",
    )
    for s in _settings():
        if s.name in _SPECIAL:
            continue
        kwargs: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS}
        env = s.env + (" or PORT" if s.name == "port" else "")
        shown = "none" if s.default is None else s.default
        words = s.help or s.name.replace("_", " ")
        kwargs["help"] = f"{words} (env {env}; default {shown})"
        if s.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argtype(s)
            kwargs["metavar"] = s.name.upper()
        if s.name == "log_level":
            kwargs["choices"] = LOG_LEVELS
            kwargs["type"] = str.lower
        if s.name == "log_format":
            kwargs["choices"] = LOG_FORMATS
            kwargs["type"] = str.lower
        serve.add_argument(s.flag, **kwargs)
    store = serve.add_mutually_exclusive_group()
    store.add_argument(
        "--db",
        dest="db_path",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="SQLite file of the durable store, or a postgresql://USER@HOST/DB URL for the "
        "PostgreSQL store (env RELAY_DB_PATH; default relay.db)",
    )
    store.add_argument(
        "--memory",
        dest="db_path",
        action="store_const",
        const=None,
        default=argparse.SUPPRESS,
        help="keep everything in memory (nothing survives a restart)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=argparse.SUPPRESS,
        help="allow listening on a non-loopback address without token auth, so that anyone who "
        "can reach the port may sign in as any user (env RELAY_INSECURE_NO_AUTH)",
    )


def _argtype(setting: _Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = setting.base.__name__
    return convert


def config_from(args: argparse.Namespace, environ: Mapping[str, str]) -> RelayConfig:
    """The RelayConfig of `relay serve`: flags, then RELAY_<NAME> (and PORT), then defaults."""
    values: dict[str, Any] = {}
    given = vars(args)
    for s in _settings():
        if s.name in given:
            values[s.name] = given[s.name]
            continue
        for var in (s.env, "PORT") if s.name == "port" else (s.env,):
            text = environ.get(var)
            if text is not None:
                try:
                    values[s.name] = s.parse(text)
                except ValueError as exc:
                    raise ConfigError(f"{var}: {exc}") from None
                break
    level = values.get("log_level")
    if level is not None and str(level).lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return RelayConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relay", description="A real-time messaging relay (WebSocket, Trio).")
    parser.add_argument("--version", action="version", version=f"relay {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,chat}")
    _serve_parser(sub)
    sub.add_parser("chat", help="terminal chat client (relay chat --help)", add_help=False)
    return parser


def unknown_variables(environ: Mapping[str, str]) -> Iterator[str]:
    """One warning per RELAY_* variable nothing reads, naming the closest known one if any."""
    known = {s.env for s in _settings()} | set(OTHER_VARIABLES)
    suffixes = {name.removeprefix("RELAY_"): name for name in known}
    for name in sorted(environ):
        if not name.startswith("RELAY_") or name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix("RELAY_"), suffixes, n=1, cutoff=0.6)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        yield f"relay: warning: {name} is not a relay setting; it is ignored{hint}"


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> RelayConfig:
    """The RelayConfig `relay serve` runs: config_from, with the host chosen by token auth
    when none was given, and a non-loopback host without token auth refused unless
    --insecure-no-auth (or RELAY_INSECURE_NO_AUTH) allows it. Raises ConfigError."""
    config = config_from(args, environ)
    if "host" not in vars(args) and "RELAY_HOST" not in environ:
        config = attrs.evolve(config, host="0.0.0.0" if config.token_auth else "127.0.0.1")
    insecure = vars(args).get("insecure_no_auth", False)
    if not insecure and "RELAY_INSECURE_NO_AUTH" in environ:
        try:
            insecure = _parse_bool(environ["RELAY_INSECURE_NO_AUTH"])
        except ValueError as exc:
            raise ConfigError(f"RELAY_INSECURE_NO_AUTH: {exc}") from None
    if not config.token_auth and not insecure and not is_loopback(config.host):
        raise ConfigError(
            f"refusing to listen on {config.host or '0.0.0.0'} without token auth, as anyone "
            "who can reach it could sign in as any user: set RELAY_AUTH_SECRET (or "
            "--auth-secret-file / --auth-public-key-file), listen on 127.0.0.1, or pass "
            "--insecure-no-auth"
        )
    return config


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only. A name counts when every
    address it resolves to is loopback; a name that does not resolve counts too, as listening
    on it then fails with its own error."""
    if host in _WILDCARD_HOSTS:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return True
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def tls_problem(config: RelayConfig) -> str | None:
    """Why the TLS certificate and key cannot be loaded, naming the file; None when they can."""
    if config.certfile is None or config.keyfile is None:
        return None
    for what, path in (("certificate", config.certfile), ("private key", config.keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return f"cannot read the TLS {what} file {path!r}: {exc.strerror or exc}"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            config.certfile, config.keyfile
        )
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return (
            f"cannot load the TLS certificate {config.certfile!r} with the private key "
            f"{config.keyfile!r}: {reason}"
        )
    return None


def _fail(status: int, message: str) -> int:
    print(f"relay: error: {message}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "chat":
        return _chat(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    for warning in unknown_variables(os.environ):
        print(warning, file=sys.stderr, flush=True)
    try:
        config = serve_config(args, os.environ)
        authenticator = authenticator_from_config(config)
        if config.webhook_secret_file is not None:  # unreadable or empty: a usage mistake
            from relay.webhooks.signature import read_secret_file

            read_secret_file(config.webhook_secret_file)
    except ConfigError as exc:
        return _fail(2, str(exc))
    problem = tls_problem(config)
    if problem is not None:
        return _fail(1, problem)
    logs.configure(config.log_level, config.log_format)
    # httpx (the webhooks' client) logs every request, URL and all, at INFO; relay.webhooks
    # logs what an operator needs (a receiver failing, recovering)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return _serve(config, authenticator)


def _chat(argv: list[str]) -> int:
    try:
        from relay.client.chat import main as chat_main
    except ImportError as exc:
        print(
            f"relay chat is not available: cannot import relay.client.chat ({exc})", file=sys.stderr
        )
        return 2
    return int(chat_main(argv) or 0)


def _serve(config: RelayConfig, authenticator: Authenticator) -> int:
    import trio

    from relay.heap import limit_arenas
    from relay.store.sqlite.memstatus import disable_memory_statistics

    limit_arenas()  # a serving process only, before the store's threads start (relay.heap)
    disable_memory_statistics()  # a serving process only, before the store opens (its doc)

    try:
        trio.run(_serve_until_signal, config, authenticator)
    except (BaseExceptionGroup, RelayError, OSError) as exc:
        leaves = list(_leaves(exc))
        if not all(isinstance(e, RelayError | OSError) for e in leaves):
            raise
        # one line per distinct failure (several tasks may meet the same one)
        for line in dict.fromkeys(_describe(e, config) for e in leaves):
            _fail(1, line)
        return 1
    return 0


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside `exc`, however deep Trio's nurseries grouped them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _describe(exc: BaseException, config: RelayConfig) -> str:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.filename is not None:
            return f"{reason}: {exc.filename!r}"
        # trio's bind errors carry the address in their text, not in `filename`
        return f"cannot listen on {config.host or '0.0.0.0'}:{config.port}: {reason}"
    return str(exc)


def listening_line(address: Any) -> str:
    """The line `relay serve` prints once listening: the address really bound."""
    host = address.host or "0.0.0.0"
    shown = f"[{host}]" if ":" in host else host
    return f"WebSocket server running on {address.scheme}://{shown}:{address.port}"


#: Young-generation size of the garbage collector in `relay serve` (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """The collector for a serving process (called once started; a library user's process is
    left as it is). What startup made (modules, config, the open store) lives as long as the
    process: frozen out of the collector's sight, full collections stay short. A larger young
    generation lets what lives for a few milliseconds (messages queued for a group commit,
    their answers) die young instead of being promoted and walked again by older collections:
    with the SQLite store the collector's time fell from 0.34 s to under 0.01 s in a durable
    bench run, and delivered msg/s rose by about a tenth. A young collection then walks at
    most 10,000 objects (about a millisecond)."""
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _serve_until_signal(config: RelayConfig, authenticator: Authenticator) -> None:
    from relay.app import Relay

    relay = Relay(config, authenticator=authenticator)
    # one relay in this process: its metrics go on prometheus_client's default registry too
    relay.metrics.export_to_default()
    try:
        await _serve_relay(relay, config, authenticator)
    finally:
        relay.metrics.unexport()
    log.info("stopped")


async def _serve_relay(relay: Relay, config: RelayConfig, authenticator: Authenticator) -> None:
    import trio

    from relay import fastpath, notify

    # raised before the listener exists; said once it is listening, so that a failure to
    # start stays one line
    short = raise_descriptor_limit(config.max_connections)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(relay.serve)
            tune_collector()
            print(listening_line(address), flush=True)
            # systemd (Type=notify): ready only now that the port is bound and answers
            notify.notify("READY=1", f"STATUS={listening_line(address)}")
            log.info("fast path: %s", fastpath.IMPLEMENTATION)
            _log_exposure(config, authenticator, address)
            if short is not None:
                log.warning("%s", short)
            async for signum in signals:
                notify.notify("STOPPING=1", "STATUS=draining")
                log.info("%s: draining", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _log_exposure(config: RelayConfig, authenticator: Authenticator, address: Any) -> None:
    if address.host in _WILDCARD_HOSTS:
        log.info(
            "listening on every interface of this machine (%s), port %d",
            address.host or "0.0.0.0",
            address.port,
        )
    if isinstance(authenticator, JwtAuthenticator):
        log.info("token auth on: %s", authenticator.describe())
    else:
        log.warning(
            "token auth is off: every auth frame's userId is trusted (set RELAY_AUTH_SECRET, "
            "RELAY_AUTH_SECRET_FILE or RELAY_AUTH_PUBLIC_KEY_FILE to check tokens)%s",
            "" if is_loopback(config.host) else "; --insecure-no-auth: reachable from other hosts",
        )
    # the HTTP API (relay.api): say where, never the keys
    if config.api_keys is not None or config.api_keys_file is not None:
        scheme = "https" if address.scheme == "wss" else "http"
        log.info(
            "HTTP API on %s://%s:%d/api/v1/ (keys from %s)",
            scheme,
            address.host or "0.0.0.0",
            address.port,
            " and ".join(
                name
                for name, value in (
                    ("api_keys", config.api_keys),
                    ("api_keys_file", config.api_keys_file),
                )
                if value is not None
            ),
        )
