"""Errors as OpenAI sends them: a status code and {"error": {"message", "type", "param", "code"}}, with one sentence.

Every error a client can cause becomes one of these; FastAPI's own 422 and HTML error pages never reach a client."""

from __future__ import annotations

import json
import logging
import re

from llmlab.errors import LlmlabError
from llmlab.infer.engine import EngineFullError

logger = logging.getLogger("llmlab.infer.serve")

RETRY_AFTER_SECONDS = 1
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable", 500: "internal_server_error"}
# GenerationConfig's fields under the names a request gives them
REQUEST_FIELDS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
UNION_TAG = re.compile(r"[\[\]-]|^(str|int|float|bool|list|dict|none)$")  # pydantic's names of union members


class APIError(Exception):
    """An error answered with status and OpenAI's error body; param names the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body of the error."""
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code if self.code is not None else self.status}}

    def encoded(self) -> bytes:
        """The body as JSON bytes."""
        return json.dumps(self.body()).encode()


def bad_request(message: str, param: str | None = None) -> APIError:
    """A 400 for a bad field."""
    return APIError(400, message, param)


def from_llmlab_error(error: LlmlabError) -> APIError:
    """The API error of an error llmlab raised for a request: the queue being full is 503 with Retry-After, any
    other is a bad request (a GenerationConfig field renamed to the request's name for it)."""
    message = str(error)
    if isinstance(error, EngineFullError):
        return APIError(503, message, code="engine_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    match = re.search(r"GenerationConfig\.(\w+)", message)
    if match is None:
        return bad_request(message)
    field = REQUEST_FIELDS.get(match.group(1), match.group(1))
    return bad_request(message.replace(match.group(0), field), field)


def _param(location) -> str | None:
    """The dotted request field of a pydantic error location, without "body" and the names of union members."""
    parts = [str(part) for part in location[1:] if isinstance(part, int) or not UNION_TAG.search(str(part))]
    return ".".join(parts) or None


def from_validation_errors(errors) -> APIError:
    """A 400 for FastAPI's request validation errors: unreadable JSON, a body that is no object, or the first field
    at fault, named."""
    errors = list(errors)
    first = errors[0] if errors else {"type": "missing", "loc": ("body",), "msg": "missing"}
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return bad_request(f"The request body is not valid JSON{f' ({reason})' if reason else ''}.")
    param = _param(first["loc"])
    if param is None:
        return bad_request("The request body must be a JSON object." if first["type"] != "missing"
                           else "The request needs a JSON body.")
    if first["type"] == "missing":
        return bad_request(f"The request is missing the required field '{param}'.", param)
    if first["type"] == "extra_forbidden":
        return bad_request(f"The request has an unknown field '{param}'.", param)
    same_field = [error for error in errors if _param(error["loc"]) == param]
    reason = first["msg"][0].lower() + first["msg"][1:]
    if len(same_field) > 1:
        return bad_request(f"The field '{param}' has a value of the wrong type or range ({reason}).", param)
    return bad_request(f"The field '{param}' is invalid: {reason}.", param)


def install_error_handlers(app) -> None:
    """Answer every error in OpenAI's shape: APIError, llmlab's errors, validation, HTTP errors and (bugs) the rest."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return respond(error)

    @app.exception_handler(LlmlabError)
    async def llmlab_error(request, error: LlmlabError):
        return respond(from_llmlab_error(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return respond(from_validation_errors(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        if error.status_code == 404:
            message = f"There is no endpoint {request.method} {request.url.path}."
        elif error.status_code == 405:
            message = f"{request.url.path} does not take {request.method}."
        else:
            message = str(error.detail)
        return respond(APIError(error.status_code, message, headers=dict(error.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected_error(request, error: Exception):
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return respond(APIError(500, f"The server failed to answer ({type(error).__name__}); this is a bug."))

