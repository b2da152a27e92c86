"""``scilm serve``: a FastAPI app speaking the Hugging Face inference payloads, run by uvicorn.

Routes: ``POST /predict`` (HF payloads), ``POST /draw`` (SMILES -> SVG), ``GET /info`` (what
the model takes), ``GET|HEAD /health``, ``GET /ready``, ``GET /metrics`` (Prometheus) and ``GET /``
(the web page). A request's life:

1. the connection layer (:mod:`scilm.serving.connections`) gives its headers ``header_timeout``
   seconds and caps connections per client and in all;
2. the :class:`Guard` middleware times it and checks, in order: the Host header (DNS rebinding) and
   any Origin (cross-site pages), the API key, the JSON content type of a POST (415), the number of
   requests in flight (503; never for ``/health`` and ``/ready``), and reads its body within
   ``body_timeout`` (408) and the size limit (413, before any parsing);
3. the handler parses and validates it in a small thread pool, off the event loop
   (:mod:`scilm.serving.limits`, :mod:`scilm.serving.schema`, the model's ``prepare``), checks its
   estimated cost against the per-request budget (422) and hands it to the :class:`MicroBatcher`
   (server-wide budget: 503), and drops it if the client goes away before the answer;
4. ``respond`` shapes the answer.

Every client error is ``{"error": "..."}`` with a 4xx status; nothing else leaks a traceback. A 422
adds ``"error_type": "validation"`` and a 503 ``"overloaded"`` (Text Generation Inference's names,
which ``InferenceClient`` raises as ``ValidationError`` / ``OverloadedError``). No CORS headers are
ever sent: a page from another origin cannot read answers, and cannot send JSON without a
preflight that fails.

SIGTERM (:class:`ScilmServer`): queued requests are answered 503 with Retry-After at once, the
model call being run finishes (it is bounded by ``max_batch_seconds``), and the process exits
within ``max_batch_seconds + SHUTDOWN_GRACE``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from scilm.errors import ScilmError
from scilm.serving.batching import Cancelled, MicroBatcher, QueueFull, ShuttingDown, TimeLimit
from scilm.serving.bounds import SHUTDOWN_GRACE, ServerLimits
from scilm.serving.limits import MAX_BODY_BYTES, MAX_INPUTS, RequestError, parse_json_body
from scilm.serving.metrics import CONTENT_TYPE, ServerMetrics
from scilm.serving.schema import parse_payload

log = logging.getLogger("scilm.serving")

_PATHS = ("/", "/predict", "/draw", "/info", "/health", "/ready", "/metrics")
_OPEN_PATHS = ("/", "/health", "/ready")  # no API key needed: the page itself and the probes
_PROBES = ("/health", "/ready")  # always answered: no Host check, no request limit
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOOPBACK_HOSTS = frozenset(LOOPBACK_NAMES)


_ERROR_TYPES = {422: "validation", 503: "overloaded"}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": message}
    if status in _ERROR_TYPES:
        body["error_type"] = _ERROR_TYPES[status]
    return JSONResponse(body, status_code=status, headers=headers)


# -- the Host header ------------------------------------------------------------------------------

def host_name(value: str) -> str:
    """``"Example.COM:8000"`` -> ``"example.com"``, ``"[::1]:80"`` -> ``"::1"`` (no port, lower case, no final dot)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_allowed_host(entry: str) -> tuple[str | None, str, int | None]:
    """An ``--allowed-host`` entry, ``NAME``, ``NAME:PORT`` or ``SCHEME://NAME[:PORT]``, as (scheme, name, port).

    ``"Models.Lab.example:8443"`` -> ``(None, "models.lab.example", 8443)``, ``"https://[::1]"`` ->
    ``("https", "::1", None)``. Raises ScilmError naming the entry if it is none of these.
    """
    text = entry.strip()
    if "://" not in text:
        text = f"//[{text}]" if text.count(":") > 1 and "[" not in text else f"//{text}"  # a bare IPv6 address
    parts = urlsplit(text)
    scheme = parts.scheme.lower() or None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (scheme not in (None, *_DEFAULT_PORTS) or not parts.hostname or port in (-1, 0)
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None):
        raise ScilmError(f"--allowed-host {entry!r}: expected NAME, NAME:PORT or http(s)://NAME[:PORT]")
    return scheme, parts.hostname.rstrip("."), port


def allowed_hosts(bind: str, extra: tuple[str, ...] | list[str] = ()) -> frozenset[str] | None:
    """Host names a request may name for a server bound to ``bind`` (None: any, from ``"*"`` in ``extra``).

    Bound to loopback: the loopback names. Bound to every interface (``0.0.0.0``, ``::``): those, the
    machine's host names and every address of its interfaces. Bound to one address: that address.
    ``extra`` adds names (the ones a reverse proxy or users reach the server by; entries as in
    :func:`parse_allowed_host`, whose scheme and port matter only to :func:`allowed_origins`).
    """
    if any(h.strip() == "*" for h in extra):
        return None
    names = {host_name(bind), *(parse_allowed_host(h)[1] for h in extra)}
    if is_loopback(bind):
        names.update(LOOPBACK_NAMES)
    elif bind in ("0.0.0.0", "::", ""):
        import psutil

        names.update(LOOPBACK_NAMES)
        names.update(host_name(n) for n in (socket.gethostname(), socket.getfqdn()))
        for addresses in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0].lower() for a in addresses
                         if a.family in (socket.AF_INET, socket.AF_INET6))
    return frozenset(n for n in names if n)


def allowed_origins(extra: tuple[str, ...] | list[str] = ()) -> frozenset[tuple[str, str, int]]:
    """The ``(scheme, name, port)`` web origins the ``--allowed-host`` entries ``extra`` admit.

    Besides these, :class:`Guard` admits only the server's own origin (an allowed name with the
    scheme and port the request came in on). ``NAME``: ``http://NAME`` and ``https://NAME`` on their
    default ports (a reverse proxy in front); ``NAME:PORT``: either scheme on that port;
    ``SCHEME://NAME[:PORT]``: that origin alone. ``"*"`` adds nothing (it turns the checks off).
    """
    origins = set()
    for entry in extra:
        if entry.strip() == "*":
            continue
        scheme, name, port = parse_allowed_host(entry)
        for s in (scheme,) if scheme else tuple(_DEFAULT_PORTS):
            origins.add((s, name, port or _DEFAULT_PORTS[s]))
    return frozenset(origins)


def _origin(value: str) -> tuple[str, str, int] | None:
    """``"http://LocalHost:8000"`` -> ``("http", "localhost", 8000)``; None if not an http(s) origin."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.rstrip("."), port


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = value.split(";")
    parsed = {}
    for param in params:
        name, _, v = param.partition("=")
        parsed[name.strip().lower()] = v.strip().strip('"').lower()
    return kind.strip().lower(), parsed


class Guard:
    """ASGI middleware: metrics for every request, Host/Origin, API key, content type, in-flight cap, body.

    The body is read here, counted as it streams in, and handed on only if it fits: a declared
    ``Content-Length`` over the limit is refused before a byte is read, a body that lies about
    its length (or is chunked) is cut off at the limit, and one that has not arrived after
    ``body_timeout`` seconds is a 408.
    """

    def __init__(self, app, metrics: ServerMetrics, max_body: int, api_key: str | None,
                 hosts: frozenset[str] | None = None, body_timeout: float = 30.0, max_requests: int = 512,
                 retry_after=lambda: 1, origins: frozenset[tuple[str, str, int]] = frozenset()):
        self.app, self.metrics, self.max_body, self.api_key = app, metrics, max_body, api_key
        self.hosts, self.body_timeout, self.max_requests = hosts, body_timeout, max_requests
        self.origins = origins
        self.retry_after = retry_after
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        """ASGI entry: answer a rejected request here (4xx, 503), else pass it on with its body read.

        Probes (``/health``, ``/ready``) skip the Host, key and content-type checks and the
        in-flight cap; every HTTP request is counted in the metrics with its status and seconds.
        """
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        path = scope["path"] if scope["path"] in _PATHS else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        counted = False
        try:
            rejection = None if scope["path"] in _PROBES else (
                self._check_host(scope) or self._check_auth(scope) or self._check_content_type(scope))
            if rejection is None and scope["path"] not in _PROBES:
                if self.in_flight >= self.max_requests:
                    rejection = _error(503, f"overloaded: {self.in_flight} requests in progress; retry later",
                                       {"Retry-After": str(self.retry_after())})
                else:
                    self.in_flight += 1
                    counted = True
            if rejection is None:
                rejection = await self._read_body(scope, receive)
            if isinstance(rejection, Response):
                await rejection(scope, receive, send_status)
                return
            await self.app(scope, rejection, send_status)
        finally:
            if counted:
                self.in_flight -= 1
            self.metrics.observe_request(path, status[0], time.perf_counter() - start)

    def _check_host(self, scope) -> Response | None:
        """A Host (and any Origin) this server answers to: the defence against DNS rebinding and cross-site posts.

        An Origin is this server's own only if its scheme, name and port all match: a page served
        by another port of the same machine (``http://localhost:3000``) is another origin (RFC 6454).
        """
        if self.hosts is None:
            return None
        headers = dict(scope["headers"])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts:
            return _error(400, f"Host header {host!r} is not a name this server answers to "
                               f"({', '.join(sorted(self.hosts))}); the server can allow it with --allowed-host")
        origin = headers.get(b"origin")
        if origin is not None and not self._own_origin(_origin(origin.decode("latin-1")), scope):
            return _error(403, f"cross-origin request from {origin.decode('latin-1')!r} refused")
        return None

    def _own_origin(self, origin: tuple[str, str, int] | None, scope) -> bool:
        if origin is None:
            return False
        if origin in self.origins:
            return True
        scheme, name, port = origin
        server = scope.get("server")  # (address, port) of the socket the request came in on
        return (name in self.hosts and server is not None and port == server[1]
                and scheme == scope.get("scheme", "http"))

    def _check_auth(self, scope) -> Response | None:
        if self.api_key is None or scope["path"] in _OPEN_PATHS:
            return None
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return None
        return _error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                      {"WWW-Authenticate": "Bearer"})

    def _check_content_type(self, scope) -> Response | None:
        """A POST body must be declared JSON: a form or text/plain post from any web page is refused."""
        if scope["method"] != "POST":
            return None
        value = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        kind, params = _media_type(value)
        if kind != "application/json" or params.get("charset", "utf-8") not in ("utf-8", "utf8"):
            return _error(415, f"Content-Type must be application/json (got {value or 'none'!r})")
        return None

    async def _read_body(self, scope, receive):
        """A replaying ``receive`` with the whole body, or a 4xx response."""
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = _error(413, f"request body over the limit of {self.max_body} bytes")
        try:
            if declared is not None and int(declared) > self.max_body:
                return too_large
        except ValueError:
            return _error(400, "invalid Content-Length header")
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.body_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return _error(408, f"request body not received within {self.body_timeout:g} s",
                              {"Connection": "close"})
            if message["type"] == "http.disconnect":
                return Response(status_code=499)  # nobody is listening; the status is for metrics
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


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Service:
    """What one app's handlers share: the model, its micro-batcher (from startup until shutdown
    begins), the drawing worker, the prepare pool, the budgets and the metrics.

    The route handlers are its methods (:func:`_add_routes`); :meth:`lifespan` starts and stops it.
    """

    def __init__(self, served, max_batch_size: int, max_wait_ms: float, max_queue: int, batching: bool,
                 max_body_bytes: int, limits: ServerLimits):
        from scilm.serving.draw import DrawWorker

        if not batching:  # one input per forward, no waiting: the baseline the benchmark compares to
            max_batch_size, max_wait_ms = 1, 0.0
        self.served, self.limits, self.batching, self.max_body_bytes = served, limits, batching, max_body_bytes
        self.max_batch_size, self.max_wait_ms, self.max_queue = max_batch_size, max_wait_ms, max_queue
        self.max_inputs = min(MAX_INPUTS, max_queue)
        self.request_cost, self.pending_cost = limits.request_cost(served.kind), limits.pending_cost(served.kind)
        self.batcher: MicroBatcher | None = None  # running: from startup until close()
        self.closed: MicroBatcher | None = None  # after close(): finishing its running call
        self.metrics = ServerMetrics(queue_depth=lambda: self.batcher.depth if self.batcher is not None else 0)
        self.prepare_pool = ThreadPoolExecutor(max_workers=limits.prepare_threads, thread_name_prefix="scilm-prepare")
        self.drawer = DrawWorker(limits.draw_seconds, limits.draw_waiting, max_atoms=limits.draw_max_atoms,
                                 max_rings=limits.draw_max_rings)  # its process starts with the first /draw

    # -- life ------------------------------------------------------------------------------------

    def retry_after(self) -> int:
        """Seconds a client told 503 should wait: the pending work at the measured rate (5 before startup)."""
        batcher = self.batcher or self.closed
        return batcher.retry_after() if batcher is not None else 5

    def close(self) -> int:
        """Refuse new work, fail queued work (503), let the running call finish: the start of a shutdown."""
        self.drawer.closing = True
        batcher, self.batcher = self.batcher, None
        if batcher is None:
            return 0
        self.closed = batcher
        failed = batcher.close()
        log.info("shutting down: %d queued input(s) answered 503, the running call finishes", failed)
        return failed

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        """The app's lifespan: the batcher runs from startup; shutdown closes, drains and stops everything."""
        batcher = MicroBatcher(self.served.run_batch, self.max_batch_size, self.max_wait_ms, self.max_queue,
                               on_batch=self.metrics.observe_batch, max_batch_cost=self.request_cost,
                               max_pending_cost=self.pending_cost, max_batch_seconds=self.limits.max_batch_seconds)
        batcher.start()
        self.batcher = batcher
        yield
        self.close()
        await self.closed.stop()
        await asyncio.to_thread(self.drawer.close)
        self.prepare_pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, function, *args):
        """``function(*args)`` in the prepare pool: CPU work (parsing, validation) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.prepare_pool, function, *args)

    # -- POST /predict ---------------------------------------------------------------------------

    def prepare(self, body: bytes):
        """Parse, validate and price a /predict body: (payload, group, values, costs); 4xx RequestError."""
        served = self.served
        payload = parse_payload(parse_json_body(body), self.max_inputs, served.parameters)
        group, values = served.prepare(payload)
        costs = [served.cost(group, value) for value in values]
        if sum(costs) > self.request_cost:
            raise RequestError(422, f"request too expensive: {describe_cost(served.kind, payload, group, costs)} "
                                    f"is over this server's per-request budget of {self.request_cost:,} token-steps")
        return payload, group, values, costs

    async def predict(self, request: Request):
        """``POST /predict``: an HF payload in, the model's answer out; dropped (499) if the client leaves.

        Raises RequestError: 4xx for a bad or too expensive payload (:meth:`prepare`), 503 when
        overloaded, shutting down or past the time limit (:meth:`_unavailable`).
        """
        payload, group, values, costs = await self.off_loop(self.prepare, await request.body())
        batcher = self.batcher
        if batcher is None:
            raise RequestError(503, "server is shutting down", {"Retry-After": str(self.retry_after())})
        work = asyncio.ensure_future(batcher.submit(values, group, costs))
        gone = asyncio.ensure_future(_until_disconnect(request.receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client went away (or this handler was cancelled): drop its work
                work.cancel()
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # nobody reads it; the status is for metrics
        try:
            results = work.result()
        except Cancelled:  # every request of the call went away
            return Response(status_code=499)
        except (QueueFull, ShuttingDown, TimeLimit) as exc:
            raise self._unavailable(exc, batcher, sum(costs)) from None
        except Exception:  # a model failure no validation foresaw: logged, answered, the connection kept
            log.exception("model call failed for /predict")
            return _error(500, "internal error (details are in the server log)")
        return await self.off_loop(self.served.respond, payload, results)

    def _unavailable(self, exc: QueueFull | ShuttingDown | TimeLimit, batcher: MicroBatcher, cost: int) -> RequestError:
        """The 503 (with Retry-After, in seconds) for work of ``cost`` token-steps the batcher refused or stopped."""
        if isinstance(exc, QueueFull):
            return RequestError(503, f"overloaded: {exc}; retry later", {"Retry-After": str(batcher.retry_after(cost))})
        if isinstance(exc, ShuttingDown):
            return RequestError(503, "server is shutting down; retry later", {"Retry-After": str(self.retry_after())})
        return RequestError(503, f"{exc}; send fewer inputs, beams or new tokens, or retry later",
                            {"Retry-After": str(self.retry_after())})

    # -- the other routes ------------------------------------------------------------------------

    def draw_request(self, body: bytes) -> str:
        """The SMILES of a /draw body ``{"smiles": "..."}``, checked cheaply; 4xx RequestError."""
        from scilm.serving.draw import check_smiles

        data = parse_json_body(body)
        if not isinstance(data, dict) or not isinstance(data.get("smiles"), str):
            raise RequestError(422, 'smiles: expected {"smiles": "..."} with a string')
        unknown = set(data) - {"smiles"}
        if unknown:
            raise RequestError(422, f"unknown field(s) {sorted(unknown)}; expected only 'smiles'")
        return check_smiles(data["smiles"], self.limits.draw_max_chars)

    async def draw(self, request: Request):
        """``POST /draw``: ``{"smiles", "canonical", "svg"}`` drawn by the worker process."""
        smiles = await self.off_loop(self.draw_request, await request.body())
        return await self.drawer.draw(smiles)

    async def info(self):
        """``GET /info``: what the model takes, and this server's limits and budgets."""
        return {**self.served.info(), "max_inputs": self.max_inputs, "max_body_bytes": self.max_body_bytes,
                "batching": self.batching, "max_batch_size": self.max_batch_size,
                "max_request_cost": self.request_cost, "max_pending_cost": self.pending_cost,
                "max_batch_seconds": self.limits.max_batch_seconds}

    async def health(self):
        """``GET|HEAD /health``: alive."""
        return {"status": "ok"}

    async def ready(self):
        """``GET /ready``: 200 while the model takes requests, 503 before startup and once shutting down."""
        if self.batcher is None:
            return _error(503, "not ready", {"Retry-After": str(self.retry_after())})
        return {"status": "ready", "kind": self.served.kind}

    async def prometheus(self):
        """``GET /metrics``: the Prometheus text format."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def page(self):
        """``GET /``: the single static web page."""
        html = resources.files("scilm.serving").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=_PAGE_HEADERS)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": ...}`` (:func:`_error`); an unexpected one logged, answered 500, no traceback."""

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


def _add_routes(app: FastAPI, service: _Service) -> None:
    """The routes of the module docstring, each a method of ``service``."""
    app.post("/predict")(service.predict)
    app.post("/draw")(service.draw)
    app.get("/info")(service.info)
    app.api_route("/health", methods=["GET", "HEAD"])(service.health)
    app.get("/ready")(service.ready)
    app.get("/metrics")(service.prometheus)
    app.get("/", response_class=HTMLResponse)(service.page)


def create_app(served, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256,
               batching: bool = True, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               limits: ServerLimits | None = None, hosts: frozenset[str] | None = LOOPBACK_HOSTS,
               origins: frozenset[tuple[str, str, int]] = frozenset()) -> FastAPI:
    """The app around an already loaded model (:func:`scilm.serving.models.load_served_model`).

    ``hosts``: the Host names it answers to (:func:`allowed_hosts`; None: any); ``origins``: web
    origins admitted besides its own (:func:`allowed_origins`); ``limits``: its bounds (ValueError
    if inconsistent). ``app.state`` holds ``metrics``, ``close`` (begin a shutdown), ``limits`` and
    ``drawer`` (the :class:`scilm.serving.draw.DrawWorker`).
    """
    limits = limits or ServerLimits()
    limits.check()
    service = _Service(served, max_batch_size, max_wait_ms, max_queue, batching, max_body_bytes, limits)
    app = FastAPI(title="scilm", lifespan=service.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = service.metrics
    app.state.close = service.close
    app.state.limits = limits
    app.state.drawer = service.drawer
    app.add_middleware(Guard, metrics=service.metrics, max_body=max_body_bytes, api_key=api_key, hosts=hosts,
                       body_timeout=limits.body_timeout, max_requests=limits.max_requests,
                       retry_after=service.retry_after, origins=origins)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app


def describe_cost(kind: str, payload, group, costs: list[int]) -> str:
    """``"327,680 token-steps (64 inputs x 10 rows x 512 new tokens + 640 source tokens)"``, naming the parameters."""
    total = sum(costs)
    if kind != "seq2seq":
        return f"{total:,} token-steps ({len(costs)} inputs, {total:,} tokens in all)"
    rows = max(group.beams, group.k)
    steps = len(costs) * rows * group.maximum
    return (f"{total:,} token-steps ({len(costs)} inputs x {rows} sequences (parameters.num_beams / "
            f"num_return_sequences) x {group.maximum} new tokens (parameters.max_new_tokens) + "
            f"{total - steps:,} source tokens)")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` (``--host``) serves this machine only: ``localhost`` or a loopback address
    (``127.0.0.0/8``, ``::1``). A name other than ``localhost`` is not resolved, so it counts as not loopback.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The API key in environment variable ``api_key_env`` (stripped), or None when no variable is named.

    The key is read from the environment, never from a flag, so it does not show in ``ps``. Raises
    ScilmError naming the variable if it is unset or empty (a server meant to need a key would
    otherwise run open).
    """
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise ScilmError(f"--api-key-env {api_key_env}: the variable is unset or empty")
    return key


class ScilmServer(uvicorn.Server):
    """uvicorn's server, but a shutdown first answers queued requests 503 (not after the grace period).

    uvicorn's own shutdown then closes idle connections, waits for the requests in progress (the
    running model call, bounded by ``max_batch_seconds``) at most ``timeout_graceful_shutdown``,
    and runs the app's lifespan end.
    """

    def __init__(self, config, app: FastAPI | None = None):
        super().__init__(config)
        self.scilm_app = app
        self.connections = None  # the ConnectionLimits, when built by uvicorn_server

    async def shutdown(self, sockets=None):
        """Fail queued requests (503) at once, close connections still sending a request, then uvicorn's shutdown."""
        if self.scilm_app is not None:
            self.scilm_app.state.close()
        for connection in list(self.server_state.connections):  # half-sent requests: nobody to wait for
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete and getattr(connection, "evictable", False):
                connection.transport.close()
        await super().shutdown(sockets)


def uvicorn_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> ScilmServer:
    """A :class:`ScilmServer` for ``app`` with the connection defences and the bounded shutdown."""
    from scilm.serving.connections import ConnectionLimits, guarded_protocol

    limits: ServerLimits = app.state.limits
    connections = ConnectionLimits(limits.header_timeout, limits.per_client_connections, limits.max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                            http=guarded_protocol(connections), limit_concurrency=None, timeout_keep_alive=5,
                            timeout_graceful_shutdown=limits.max_batch_seconds + SHUTDOWN_GRACE)
    server = ScilmServer(config, app)
    server.connections = connections
    return server


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 32,
          max_wait_ms: float = 5.0, max_queue: int = 256, batching: bool = True,
          api_key_env: str | None = None, limits: ServerLimits | None = None,
          allowed_host: tuple[str, ...] = (), precision: str = "fp32", quantize: str = "none") -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM (bounded shutdown, see the module docstring).

    ``precision`` / ``quantize``: the protein model's mode (:func:`scilm.serving.models.load_served_model`).
    Raises ScilmError naming the setting for bad sizes or limits, an unset ``api_key_env`` variable,
    a bad ``allowed_host`` entry, a bad precision/quantize or a model directory that cannot be served.
    """
    from scilm.serving.models import load_served_model

    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
        raise ScilmError("--max-batch-size and --max-queue must be at least 1, --max-wait-ms at least 0")
    limits = limits or ServerLimits()
    try:
        limits.check()
    except ValueError as exc:
        raise ScilmError(f"--{str(exc).split()[0].replace('_', '-')}: {exc}") from None
    api_key = api_key_from_env(api_key_env)
    if api_key is None and not is_loopback(host):
        log.warning("WARNING: serving on %s without an API key: anyone who can reach this address can use "
                    "the model. Set --api-key-env VAR, or bind 127.0.0.1.", host)
    hosts, origins = allowed_hosts(host, allowed_host), allowed_origins(allowed_host)
    served = load_served_model(model, precision, quantize)
    app = create_app(served, max_batch_size, max_wait_ms, max_queue, batching, api_key, limits=limits, hosts=hosts,
                     origins=origins)
    log.info("serving the %s in %s at http://%s:%d/ (batching %s)", served.kind, model, host, port,
             f"on: up to {max_batch_size} inputs, {max_wait_ms:g} ms wait" if batching else "off")
    uvicorn_server(app, host, port).run()
