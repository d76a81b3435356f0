"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right 4xx status.

Every way a request can go wrong ends here: a body that is not JSON or breaks the schema (FastAPI's
`RequestValidationError`, answered 400 as OpenAI does, not FastAPI's 422), an unknown route or method, a refusal
of the engine (`EngineError`, a `UserError`: a prompt longer than the context, ...), a missing key (401), a full
queue (429). Only a bug in lmforge answers 500, still in this shape and without a traceback in the body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import UserError

log = logging.getLogger("lmforge.serve")

# OpenAI's error type for each status it uses.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered in OpenAI's shape; `headers` (e.g. Retry-After) go with it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str | None:
    """`body.messages.0.content` -> `messages[0].content` (the request field a validation error is about)."""
    parts = [p for p in loc if p != "body"]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    where = _location(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON (send Content-Type: application/json)", None
    if where is None and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return "the request body must be a JSON object (send Content-Type: application/json)", None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{where}: {message}{more}" if where else f"{message}{more}"), where


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_value" if param else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = {400: "the request body could not be parsed (send a JSON object, UTF-8, with Content-Type: "
                        "application/json)",
                   404: "no such route (see GET /v1/models, POST /v1/completions, POST /v1/chat/completions)",
                   405: "method not allowed on this route"}.get(status, str(exc.detail))
        return error_response(status, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(APIError)
    async def _api(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(UserError)
    async def _user(_request: Request, exc: UserError) -> JSONResponse:  # the engine's EngineError among them
        return error_response(400, exc.line())

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request")
        return error_response(500, f"internal server error ({type(exc).__name__}); this is a bug in lmforge")
