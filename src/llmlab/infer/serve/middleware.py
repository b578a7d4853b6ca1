"""ASGI middleware run before any endpoint: the API key under /v1 (401) and the size of the body (413), both refused
before the body is parsed."""

from __future__ import annotations

import hmac

from llmlab.infer.serve.errors import APIError

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # far above a prompt filling a long context as token ids
DRAIN_BYTES = 64 * 1024 * 1024  # read (and drop) this much of a body too large, so that the client reads the 413


async def send_error(send, error: APIError) -> None:
    """Answer an ASGI request with an APIError."""
    body = error.encoded()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


class GuardMiddleware:
    """Refuse a request under /v1 without the API key (compared in constant time), and a body over max_body_bytes
    (by its Content-Length, and by counting what arrives); a body that fits is read whole and handed on."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    def _authorised(self, scope) -> bool:
        if self.expected is None or not (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            return True
        given = _header(scope, b"authorization") or b""
        return hmac.compare_digest(given, self.expected)

    def _too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than the limit of {self.max_body_bytes} bytes.",
                        code="body_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            return await send_error(send, APIError(401, "The API key is missing or wrong; send it as "
                                                        "'Authorization: Bearer KEY'.", code="invalid_api_key"))
        length = _header(scope, b"content-length")
        if length is not None and not length.isdigit():
            return await send_error(send, APIError(400, "The Content-Length header is not a number."))
        chunks, size, more = [], 0, True
        while more and size <= DRAIN_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if size <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.max_body_bytes or (length is not None and int(length) > self.max_body_bytes):
            return await send_error(send, self._too_large())
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then http.disconnect, when the client goes away

        return await self.app(scope, replay, send)
