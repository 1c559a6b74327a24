"""Clients of the relay's HTTP API for an application's backend: `RelayApi` (blocking) and
`AsyncRelayApi` (async: Trio or asyncio, through httpx). Both need httpx
(`pip install 'trio-relay[api]'`).

    with RelayApi("http://127.0.0.1:8080", api_key) as api:
        sent = api.publish("system", recipient_id="ann", text="Your order shipped")
        print(sent.seq, api.presence("ann").status)

    async with AsyncRelayApi("http://127.0.0.1:8080", api_key) as api:
        await api.put_group("team", ["ann", "bob"], name="Team")

Invariants: a publish always carries an `id` (a random one when the caller gives none), so
the client's retries are idempotent: a connection failure or a 503 is retried (`retries`
times, short backoff) with the same id and yields the first publish's `seq`. Every other call
is idempotent too. A 4xx is raised at once as ApiError (`status`, `code`, `message`, `field`).
`verify` is httpx's: an ssl.SSLContext (e.g. trusting a relay's own certificate) or a CA file.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from attrs import frozen

from relay.api.values import Page, Presence, Published
from relay.errors import ClientError

#: Pause before the n-th retry (s): RETRY_PAUSE * 2**n.
RETRY_PAUSE = 0.1


class ApiError(ClientError):
    """The API refused a call: HTTP `status`, the error body's `code`, `message`, `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@frozen
class _Call:
    """One API call, sans-IO: what to send and how to read the answer."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, int] | None = None


def _seg(value: str) -> str:
    return quote(value, safe="")


def _page_params(before: int | None, after: int | None, limit: int | None) -> dict[str, int]:
    params = {"before": before, "after": after, "limit": limit}
    return {k: v for k, v in params.items() if v is not None}


def _publish_call(
    sender_id: str,
    text: str,
    recipient_id: str | None,
    group_id: str | None,
    message_id: str | None,
    meta: Mapping[str, Any] | None,
    sender_name: str | None,
) -> _Call:
    body: dict[str, Any] = {
        "senderId": sender_id,
        "text": text,
        "id": message_id if message_id is not None else secrets.token_hex(16),
    }
    if recipient_id is not None:
        body["recipientId"] = recipient_id
    if group_id is not None:
        body["groupId"] = group_id
    if meta is not None:
        body["meta"] = dict(meta)
    if sender_name is not None:
        body["senderName"] = sender_name
    return _Call("POST", "/api/v1/publish", json=body)


def _group_call(group_id: str, members: list[str], name: str | None) -> _Call:
    body: dict[str, Any] = {"members": list(members)}
    if name is not None:
        body["name"] = name
    return _Call("PUT", f"/api/v1/groups/{_seg(group_id)}", json=body)


def _disconnect_call(user_id: str, reason: str | None) -> _Call:
    body = {} if reason is None else {"reason": reason}
    return _Call("POST", f"/api/v1/users/{_seg(user_id)}/disconnect", json=body)


def _retryable(response: httpx.Response | None) -> bool:
    return response is None or response.status_code == 503


def _result(response: httpx.Response) -> Any:
    """The JSON answer of a 2xx; ApiError otherwise."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        code, message, field = error["code"], error["message"], error.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http", response.text.strip() or response.reason_phrase, None
    raise ApiError(response.status_code, code, message, field)


def _published(data: Any) -> Published:
    return Published(data["id"], data["seq"], data["timestamp"])


def _presence(data: Any) -> Presence:
    return Presence(data["userId"], data["status"], data["lastSeen"], data["devices"])


def _page(data: Any) -> Page:
    return Page(data["items"], data["hasMore"])


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}


class RelayApi:
    """A blocking client of the HTTP API (one keep-alive connection pool)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def __enter__(self) -> RelayApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: _Call) -> Any:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, params=call.params
                )
            except httpx.TransportError:
                if attempt >= self.retries:
                    raise
            if response is not None and (not _retryable(response) or attempt >= self.retries):
                return _result(response)
            time.sleep(RETRY_PAUSE * 2**attempt)
            attempt += 1

    def publish(
        self,
        sender_id: str,
        *,
        text: str,
        recipient_id: str | None = None,
        group_id: str | None = None,
        message_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        sender_name: str | None = None,
    ) -> Published:
        """Publish a message once durable (idempotent on (sender_id, message_id))."""
        call = _publish_call(sender_id, text, recipient_id, group_id, message_id, meta, sender_name)
        return _published(self._do(call))

    def presence(self, user_id: str) -> Presence:
        return _presence(self._do(_Call("GET", f"/api/v1/users/{_seg(user_id)}/presence")))

    def conversation(
        self,
        user_id: str,
        peer_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> Page:
        path = f"/api/v1/users/{_seg(user_id)}/conversations/{_seg(peer_id)}/messages"
        return _page(self._do(_Call("GET", path, params=_page_params(before, after, limit))))

    def group_messages(
        self,
        group_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> Page:
        path = f"/api/v1/groups/{_seg(group_id)}/messages"
        return _page(self._do(_Call("GET", path, params=_page_params(before, after, limit))))

    def disconnect(self, user_id: str, reason: str | None = None) -> int:
        """Close every connection of the user (1008); how many there were."""
        return int(self._do(_disconnect_call(user_id, reason))["closed"])

    def put_group(
        self,
        group_id: str,
        members: list[str],
        *,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Create the group or set its members (the first member creates a new group); the
        group as stored."""
        result: dict[str, Any] = self._do(_group_call(group_id, members, name))
        return result


class AsyncRelayApi:
    """The async client of the HTTP API (Trio or asyncio; one keep-alive connection pool)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncRelayApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: _Call) -> Any:
        import anyio  # httpx's own dependency: sleeps under Trio and asyncio alike

        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, params=call.params
                )
            except httpx.TransportError:
                if attempt >= self.retries:
                    raise
            if response is not None and (not _retryable(response) or attempt >= self.retries):
                return _result(response)
            await anyio.sleep(RETRY_PAUSE * 2**attempt)
            attempt += 1

    async def publish(
        self,
        sender_id: str,
        *,
        text: str,
        recipient_id: str | None = None,
        group_id: str | None = None,
        message_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        sender_name: str | None = None,
    ) -> Published:
        """Publish a message once durable (idempotent on (sender_id, message_id))."""
        call = _publish_call(sender_id, text, recipient_id, group_id, message_id, meta, sender_name)
        return _published(await self._do(call))

    async def presence(self, user_id: str) -> Presence:
        call = _Call("GET", f"/api/v1/users/{_seg(user_id)}/presence")
        return _presence(await self._do(call))

    async def conversation(
        self,
        user_id: str,
        peer_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> Page:
        path = f"/api/v1/users/{_seg(user_id)}/conversations/{_seg(peer_id)}/messages"
        params = _page_params(before, after, limit)
        return _page(await self._do(_Call("GET", path, params=params)))

    async def group_messages(
        self,
        group_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> Page:
        path = f"/api/v1/groups/{_seg(group_id)}/messages"
        params = _page_params(before, after, limit)
        return _page(await self._do(_Call("GET", path, params=params)))

    async def disconnect(self, user_id: str, reason: str | None = None) -> int:
        """Close every connection of the user (1008); how many there were."""
        return int((await self._do(_disconnect_call(user_id, reason)))["closed"])

    async def put_group(
        self,
        group_id: str,
        members: list[str],
        *,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Create the group or set its members (the first member creates a new group); the
        group as stored."""
        result: dict[str, Any] = await self._do(_group_call(group_id, members, name))
        return result
