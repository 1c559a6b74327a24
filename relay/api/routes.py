"""The HTTP API's routes under /api/v1/ (relay.transport.httpserver handlers).

Each route: the API key (401 before the body is read), then the body (JSON, bounded; 415 for
another Content-Type, 413 past the bound), then relay.api.backend, then a JSON answer.
Errors are `{"error": {"code", "message", "field"}}` with the codes of error frames:

    bad_json, bad_frame, invalid, too_long -> 400    unauthenticated -> 401
    forbidden -> 403    not_found -> 404    a group's name changed -> 409
    the store failed -> 503 `unavailable` (nothing was done; retry)

HTTP's own: 404 `not_found`, 405 `method_not_allowed`, 413 `too_long`, 415
`unsupported_media_type`; an unexpected failure is logged and answered 500 `internal`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from attrs import define
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.api.backend import ApiBackend, NameFixed
from relay.api.keys import ApiKeys
from relay.api.openapi import BASE, OPERATIONS, document
from relay.errors import FrameError, StoreError
from relay.transport.httpserver import HttpError, Request, RequestBody, Response, RouteTable

log = logging.getLogger("relay.api")

PREFIX = "/api/"
#: bound of the bodies of disconnect (a reason)
SMALL_BODY = 4 * 1024
#: a group's body: every member id quoted, and the name
_MEMBER_BYTES = 4 * 128 + 3

_STATUS_OF_CODE = {
    "bad_json": 400,
    "bad_frame": 400,
    "invalid": 400,
    "too_long": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "rate_limited": 429,
}
_CODE_OF_STATUS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "invalid",
    413: "too_long",
    415: "unsupported_media_type",
    503: "unavailable",
}
JSON = (b"content-type", b"application/json")


def json_response(
    status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, [JSON, *(headers or [])], orjson.dumps(body))


def error_response(request: Request, error: HttpError) -> Response:
    """The ErrorResponder of /api/: the JSON error body."""
    code = error.code or _CODE_OF_STATUS.get(error.status, "internal")
    body = {"error": {"code": code, "message": error.message, "field": error.field}}
    headers = list(error.headers)
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="relay"'))
    return json_response(error.status, body, headers)


def _refused(exc: FrameError) -> HttpError:
    status = _STATUS_OF_CODE.get(exc.code, 400)
    return HttpError(status, exc.message, code=exc.code, field=exc.field)


async def read_json(request: Request, body: RequestBody, *, optional: bool = False) -> object:
    """The JSON body (`{}` for an absent optional one)."""
    content_type = request.header(b"content-type")
    if content_type is None and optional and body.length in (None, 0):
        data = await body.read()
        if not data:
            return {}
        raise HttpError(415, "a body must be application/json")
    kind = (content_type or b"").split(b";", 1)[0].strip().lower()
    if kind != b"application/json":
        raise HttpError(415, "the body must be application/json")
    data = await body.read()
    if not data and optional:
        return {}
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"not JSON: {exc}", code="bad_json") from None


ApiHandler = Callable[[Request, RequestBody], Awaitable[Response]]


@define(eq=False)
class Api:
    backend: ApiBackend
    keys: ApiKeys
    openapi: bytes

    def authorize(self, request: Request) -> None:
        value = request.header(b"authorization")
        if value is not None:
            scheme, _, key = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and self.keys.check(key.strip()):
                return
        raise HttpError(401, "a valid API key is required (Authorization: Bearer <key>)")

    def guarded(self, handler: ApiHandler) -> ApiHandler:
        """`handler` behind the key check, with the core's errors mapped onto HTTP."""

        async def run(request: Request, body: RequestBody) -> Response:
            self.authorize(request)
            try:
                return await handler(request, body)
            except FrameError as exc:
                raise _refused(exc) from None
            except StoreError as exc:
                log.warning("API %s %s: the store failed: %s", request.method, request.route, exc)
                raise HttpError(
                    503, "the store is unavailable; retry", code="unavailable"
                ) from None

        return run

    async def publish(self, request: Request, body: RequestBody) -> Response:
        published = await self.backend.publish(await read_json(request, body))
        return json_response(
            200, {"id": published.id, "seq": published.seq, "timestamp": published.timestamp}
        )

    async def presence(self, request: Request, body: RequestBody) -> Response:
        p = await self.backend.presence(request.params["userId"])
        return json_response(
            200,
            {
                "userId": p.user_id,
                "status": p.status,
                "lastSeen": p.last_seen,
                "devices": p.devices,
            },
        )

    async def conversation(self, request: Request, body: RequestBody) -> Response:
        frame = self.backend.history_query(
            request.query_params(), peer_id=request.params["peerId"], group_id=None
        )
        page = await self.backend.conversation_page(request.params["userId"], frame)
        return json_response(200, {"items": page.items, "hasMore": page.has_more})

    async def group_messages(self, request: Request, body: RequestBody) -> Response:
        frame = self.backend.history_query(
            request.query_params(), peer_id=None, group_id=request.params["groupId"]
        )
        page = await self.backend.group_page(frame)
        return json_response(200, {"items": page.items, "hasMore": page.has_more})

    async def disconnect(self, request: Request, body: RequestBody) -> Response:
        user = request.params["userId"]
        closed = self.backend.disconnect(user, await read_json(request, body, optional=True))
        return json_response(200, {"userId": user, "closed": closed})

    async def put_group(self, request: Request, body: RequestBody) -> Response:
        try:
            group, created = await self.backend.put_group(
                request.params["groupId"], await read_json(request, body)
            )
        except NameFixed as exc:
            raise HttpError(409, exc.message, code=exc.code, field=exc.field) from None
        return json_response(
            201 if created else 200,
            {
                "groupId": group.group_id,
                "name": group.name,
                "members": list(group.members),
                "createdBy": group.created_by,
                "createdAt": group.created_at,
            },
        )

    async def openapi_json(self, request: Request, body: RequestBody) -> Response:
        return Response(200, [JSON, (b"cache-control", b"no-cache")], self.openapi)


def install(table: RouteTable, backend: ApiBackend, keys: ApiKeys) -> Api:
    """Claim /api/ on `table` and register every route of relay.api.openapi.OPERATIONS."""
    config = backend.service.config
    limits = backend.service.ctx.limits
    api = Api(backend, keys, orjson.dumps(document(limits)))
    group_body = config.max_group_members * _MEMBER_BYTES + 4 * 1024
    handlers: dict[str, tuple[ApiHandler, int]] = {
        "publish": (api.guarded(api.publish), config.max_message_bytes),
        "getPresence": (api.guarded(api.presence), 0),
        "getConversation": (api.guarded(api.conversation), 0),
        "getGroupMessages": (api.guarded(api.group_messages), 0),
        "disconnectUser": (api.guarded(api.disconnect), SMALL_BODY),
        "putGroup": (api.guarded(api.put_group), group_body),
        "getOpenApi": (api.openapi_json, 0),
    }
    table.claim(PREFIX, errors=error_response)
    for (method, path), operation in OPERATIONS.items():
        handler, max_body = handlers[operation]
        table.add(method, path, handler, max_body=max_body)
    return api


@define(eq=False)
class ApiCollector(Collector):
    """`relay_api_requests_total{method,route,status}`: the API's answers (read from the
    route table's counts; `route` is the route's template, or `/api/` for a path that
    matched none)."""

    table: RouteTable

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "relay_api_requests",
            "HTTP API requests answered, by method, route and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.table.counts.items()):
            if route.startswith(PREFIX):
                family.add_metric([method, route, str(status)], count)
        yield family


__all__ = ["BASE", "Api", "ApiCollector", "error_response", "install"]
