"""The app and the process, as vLLM's api_server.py builds and runs its own: the FastAPI app over a
started ServerState (errors in OpenAI's shape, the API key and the metrics of every request, the
OpenAPI schema with the request bodies), and `serve`, which binds the port, starts the engine,
answers until SIGTERM or SIGINT, finishes what is in flight and closes the engine last."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import socket
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from ttscale.errors import ConfigError
from ttscale.serve.protocol import APIError, ChatBody, CompletionBody, bad_request, one_line
from ttscale.serve.router import router
from ttscale.serve.serving import ClientGone
from ttscale.serve.settings import ServeSettings
from ttscale.serve.state import ServerState

log = logging.getLogger("ttscale.serve")


def create_app(state: ServerState):
    """The FastAPI app over a started ServerState."""
    app = FastAPI(title="ttscale serve", description="OpenAI-compatible test-time compute endpoint", docs_url=None, redoc_url=None)
    app.state.ttscale = state
    api_key = os.environ.get(state.settings.api_key_env) or None

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, error: ClientGone):
        return Response(status_code=499)  # nobody reads it: the connection is closed (nginx's "client closed request")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return JSONResponse(bad_request(one_line(str(error))).body(), status_code=400)

    @app.exception_handler(404)
    async def _not_found(request: Request, error: Exception):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, error: Exception):
        return JSONResponse(APIError(405, f"{request.method} is not allowed on {request.url.path}").body(), status_code=405,
                            headers=getattr(error, "headers", None))  # Starlette's Allow header

    app.add_middleware(_Gate, state=state, api_key=api_key)

    app.include_router(router)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request bodies, which the routes read themselves (under the
        body limit, off the event loop) rather than as parameters FastAPI would see."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in (("/v1/chat/completions", ChatBody), ("/v1/completions", CompletionBody)):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"})  # counted in /metrics


class _Gate:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware): the API key on /v1/ routes, and
    each request's status and latency into the metrics."""

    def __init__(self, app: Any, state: ServerState, api_key: str | None):
        self.app, self.state, self.api_key = app, state, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        metrics = self.state.metrics
        started = time.perf_counter()
        status: list[int | str] = [500]
        finished, gone = [False], [False]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            finished[0] = finished[0] or last
            await send(message)
            if message["type"] == "http.response.body" and not last:
                # Let a lost connection's callback run before the next chunk: uvicorn then drops
                # the rest quietly, where back-to-back writes logged "socket.send() raised exception." each.
                await asyncio.sleep(0)

        async def receive_watched() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not finished[0]:
                gone[0] = True  # the client left before its answer was complete
            return message

        counted = path != "/metrics"  # a scrape does not count itself in flight
        metrics.in_flight += counted
        try:
            if path.startswith("/v1/") and self.api_key is not None:
                header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
                if not _authorized(header, self.api_key):
                    error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY' (the key in "
                                          f"${self.state.settings.api_key_env} where the server runs)", code="invalid_api_key")
                    await JSONResponse(error.body(), status_code=401)(scope, receive, send_status)
                    return
            await self.app(scope, receive_watched, send_status)
        finally:
            metrics.in_flight -= counted
            seconds = time.perf_counter() - started
            if gone[0]:
                status[0] = "cancelled"
                log.warning("%s %s cancelled after %.1f s: the client disconnected, so its remaining generation was "
                            "cancelled", scope["method"], path, seconds)
            if path in ROUTES:
                metrics.observe(path, status[0], seconds)


def _authorized(header: str, api_key: str) -> bool:
    """Whether an Authorization header carries the key (compared in constant time; never logged)."""
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return hmac.compare_digest(token.encode(), api_key.encode())


# --- running the server -------------------------------------------------------------------------------


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bind(host: str, port: int):
    """A listening socket, or one line saying why not (port in use, bad host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _signals_end_serving():
    """uvicorn handles SIGTERM and SIGINT (stop taking requests, finish those in flight), then
    raises the signal again for the handler that was there before it. Here that handler does
    nothing, so the engine is closed after uvicorn returns and the command exits 0."""
    wanted = [signal.SIGTERM, signal.SIGINT]
    before = {sig: signal.signal(sig, lambda *_: None) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling the app when its shutdown begins (ServerState.stopping)."""

    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event):
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: Any = None) -> None:
        self.stopping.set()
        await super().shutdown(sockets)


async def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                announce: Any = None) -> None:
    """Start the backend, then answer requests until SIGTERM or SIGINT: uvicorn then stops
    taking new requests, finishes those in flight, and returns; the backend closes last."""
    if not os.environ.get(settings.api_key_env) and host not in LOOPBACK:
        raise ConfigError(f"${settings.api_key_env} is unset, and --host {host} is reachable from other machines; "
                          f"export {settings.api_key_env}=KEY (clients send it as their API key), or serve on 127.0.0.1")
    sock = bind(host, port)
    try:
        state = await ServerState.start(settings)
    except BaseException:
        sock.close()
        raise
    try:
        app = create_app(state)
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=None)
        server = _Uvicorn(config, state.stopping)
        if announce:
            announce(state)
        with _signals_end_serving():
            await server.serve(sockets=[sock])
    finally:
        await state.close()
        sock.close()
