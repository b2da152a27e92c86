"""``scilm serve``: a FastAPI app speaking the Hugging Face inference payloads, run by uvicorn.

Routes: ``POST /predict`` (HF payloads), ``POST /draw`` (SMILES -> SVG), ``GET /info`` (what
the model takes), ``GET /health``, ``GET /ready``, ``GET /metrics`` (Prometheus) and ``GET /``
(the web page). A request's life: the :class:`Guard` middleware times it and reads its body
(413 past the limit, before any parsing); the handler parses it (:mod:`scilm.serving.limits`) and
validates its shape and parameters (:mod:`scilm.serving.schema`), the model's ``prepare`` checks
its inputs, the
:class:`MicroBatcher` runs them with other requests' inputs, and ``respond`` shapes the answer.
Every client error is ``{"error": "..."}`` with a 4xx status; nothing else leaks a traceback. A 422
adds ``"error_type": "validation"`` and a 503 ``"overloaded"`` (Text Generation Inference's names,
which ``InferenceClient`` raises as ``ValidationError`` / ``OverloadedError``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from scilm.errors import ScilmError
from scilm.serving.batching import MicroBatcher, QueueFull
from scilm.serving.limits import MAX_BODY_BYTES, MAX_INPUTS, RequestError, parse_json_body
from scilm.serving.metrics import CONTENT_TYPE, ServerMetrics
from scilm.serving.schema import parse_payload

log = logging.getLogger("scilm.serving")

_PATHS = ("/", "/predict", "/draw", "/info", "/health", "/ready", "/metrics")
_OPEN_PATHS = ("/", "/health", "/ready")  # no API key needed: the page itself and the probes
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


_ERROR_TYPES = {422: "validation", 503: "overloaded"}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": message}
    if status in _ERROR_TYPES:
        body["error_type"] = _ERROR_TYPES[status]
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: metrics for every request, body size limit, API key.

    The body is read here, counted as it streams in, and handed on only if it fits: a declared
    ``Content-Length`` over the limit is refused before a byte is read, a body that lies about
    its length (or is chunked) is cut off at the limit.
    """

    def __init__(self, app, metrics: ServerMetrics, max_body: int, api_key: str | None):
        self.app, self.metrics, self.max_body, self.api_key = app, metrics, max_body, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        path = scope["path"] if scope["path"] in _PATHS else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            rejection = self._check_auth(scope) or await self._read_body(scope, receive)
            if isinstance(rejection, Response):
                await rejection(scope, receive, send_status)
                return
            await self.app(scope, rejection, send_status)
        finally:
            self.metrics.observe_request(path, status[0], time.perf_counter() - start)

    def _check_auth(self, scope) -> Response | None:
        if self.api_key is None or scope["path"] in _OPEN_PATHS:
            return None
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return None
        return _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                      {"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope, receive):
        """A replaying ``receive`` with the whole body, or a 413 response."""
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = _error(413, f"request body over the limit of {self.max_body} bytes")
        try:
            if declared is not None and int(declared) > self.max_body:
                return too_large
        except ValueError:
            return _error(400, "invalid Content-Length header")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Response(status_code=400)  # nobody is listening; the status is for metrics
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), [False]

        async def replay():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for disconnect, as the server would

        return replay


def create_app(served, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
               batching: bool = True, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app around an already loaded model (:func:`scilm.serving.models.load_served_model`)."""
    if not batching:  # one input per forward, no waiting: the baseline the benchmark compares to
        max_batch_size, max_wait_ms = 1, 0.0
    max_inputs = min(MAX_INPUTS, max_queue)
    holder: dict = {}
    metrics = ServerMetrics(queue_depth=lambda: holder["batcher"].depth if "batcher" in holder else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(served.run_batch, max_batch_size, max_wait_ms, max_queue,
                               on_batch=metrics.observe_batch)
        batcher.start()
        holder["batcher"] = batcher
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; drain what is left
        holder.pop("batcher")
        await batcher.stop()

    app = FastAPI(title="scilm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.add_middleware(Guard, metrics=metrics, max_body=max_body_bytes, api_key=api_key)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("error while serving %s", request.url.path)
        return _error(500, "internal error (details are in the server log)")

    @app.post("/predict")
    async def predict(request: Request):
        payload = parse_payload(parse_json_body(await request.body()), max_inputs, served.parameters)
        group, values = served.prepare(payload)
        batcher = holder.get("batcher")
        if batcher is None:
            raise RequestError(503, "server is shutting down", {"Retry-After": "5"})
        try:
            results = await batcher.submit(values, group)
        except QueueFull as exc:
            raise RequestError(503, f"overloaded: {exc}; retry later",
                               {"Retry-After": str(batcher.retry_after())}) from None
        return served.respond(payload, results)

    @app.post("/draw")
    async def draw(request: Request):
        from scilm.serving.draw import smiles_svg

        data = parse_json_body(await request.body())
        if not isinstance(data, dict) or not isinstance(data.get("smiles"), str):
            raise RequestError(422, 'expected {"smiles": "..."}')
        return await asyncio.to_thread(smiles_svg, data["smiles"])

    @app.get("/info")
    async def info():
        return {**served.info(), "max_inputs": max_inputs, "max_body_bytes": max_body_bytes,
                "batching": batching, "max_batch_size": max_batch_size}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if "batcher" not in holder:
            return _error(503, "not ready")
        return {"status": "ready", "kind": served.kind}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        html = resources.files("scilm.serving").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise ScilmError(f"--api-key-env {api_key_env}: the variable is unset or empty")
    return key


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32,
          max_wait_ms: float = 5.0, max_queue: int = 256, batching: bool = True,
          api_key_env: str | None = None) -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM; in-flight requests finish first."""
    import uvicorn

    from scilm.serving.models import load_served_model

    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
        raise ScilmError("--max-batch-size and --max-queue must be at least 1, --max-wait-ms at least 0")
    api_key = api_key_from_env(api_key_env)
    if api_key is None and not is_loopback(host):
        log.warning("WARNING: serving on %s without an API key: anyone who can reach this address can use "
                    "the model. Set --api-key-env VAR, or bind 127.0.0.1.", host)
    served = load_served_model(model)
    app = create_app(served, max_batch_size, max_wait_ms, max_queue, batching, api_key)
    log.info("serving the %s in %s at http://%s:%d/ (batching %s)", served.kind, model, host, port,
             f"on: up to {max_batch_size} inputs, {max_wait_ms:g} ms wait" if batching else "off")
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            server_header=False, timeout_graceful_shutdown=30, limit_concurrency=1024)
    uvicorn.Server(config).run()
