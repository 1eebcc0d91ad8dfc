"""The prediction service: a FastAPI app over a micro-batched model (the command line is ../../serve.py).

Endpoints:

* ``POST /predict`` ``{"statements": [str, ...], "explain": false}`` -> ``{"predictions": [{"statement",
  "label", "probability_positive"[, "tokens", "tokens_not_read"]}], "model": {...}}``: the labels and
  probabilities ``predict.py`` gives (same tokenizer, ``max_len`` and threshold). With ``"explain": true``
  each prediction also lists its read tokens with their leave-one-out contributions (:mod:`.explain`).
* ``GET /livez``: 200 while the process answers (liveness); ``GET /readyz`` (and ``/health``): 200
  ``{"status": "ready"}`` once every shape is compiled, 503 before (or if warm-up failed) (readiness).
* ``GET /model``: the exported manifest, or the same description of a checkpoint, with ``version``: the model's
  digest, also sent as the ``X-Model-Version`` header of every answer.
* ``GET /metrics``: Prometheus text (requests by path and status, statements, rows and requests per model call,
  seconds in the queue, latency histograms, refused requests by reason).
* ``GET /``: the page (``web/``: HTML, CSS and JavaScript served from here; no CDN, works offline).

Every refused request gets a 4xx JSON ``{"error": "..."}`` naming the problem (a POST must be
``application/json``: 415 otherwise, so a web page cannot post to it without a CORS preflight); a full queue
a 503 with ``Retry-After``; a client that leaves mid-body is counted as ``client_disconnected`` (status 499,
nothing logged); a request that fails inside the model gets a 500 and the server goes on. The connection-level
bounds, the ``Host`` check and the token are :mod:`.server`'s. Requests never share results: each one's rows
travel with its own future through :class:`~.microbatch.MicroBatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.resources
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.serve import explain, server
from lstm_jax.sentiment.serve.microbatch import FixedShapeScorer, MicroBatcher, QueueFull
from lstm_jax.sentiment.tokenizer import UNKNOWN_ID, Vocabulary, tokenize

prometheus_client.disable_created_metrics()  # the *_created series only double the page's length

ROUTES = ("/", "/page.js", "/page.css", "/predict", "/livez", "/readyz", "/health", "/model", "/metrics")
WEB_FILES = {"/": ("index.html", "text/html"), "/page.js": ("page.js", "text/javascript"),
             "/page.css": ("page.css", "text/css")}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (``serve.py`` flags of the same names)."""

    max_body_bytes: int = 1 << 20
    max_statements: int = 256
    max_chars: int = 5000
    max_explained: int = 16  # each explained statement costs one model row per token
    max_queued_rows: int = 1 << 14  # model rows waiting for the micro-batcher; past it, 503 with Retry-After


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "bad_request", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], bool]:
    """``(statements, explain)`` from a ``/predict`` body, or :class:`ApiError` naming what is wrong."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the body is not UTF-8 (byte {error.start}); send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as error:
        raise ApiError(400, f"the body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
                       ) from None  # fmt: skip
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply; send {\"statements\": [\"...\"]}") from None
    except ValueError:  # an integer of more than 4,300 digits (Python's limit on converting them)
        raise ApiError(400, "the body holds an integer of more than 4,300 digits; send statements as strings") from None
    if not isinstance(payload, dict) or "statements" not in payload:
        raise ApiError(422, 'the body must be a JSON object {"statements": ["...", ...]}')
    unknown = sorted(set(payload) - {"statements", "explain"})
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}; the fields are 'statements' and 'explain'")
    statements, explain_tokens = payload["statements"], payload.get("explain", False)
    if not isinstance(explain_tokens, bool):
        raise ApiError(422, f"'explain' must be true or false, got {json.dumps(explain_tokens)[:40]}")
    if not isinstance(statements, list) or not statements:
        raise ApiError(422, "'statements' must be a non-empty list of strings")
    most = limits.max_explained if explain_tokens else limits.max_statements
    if len(statements) > most:
        raise ApiError(413, f"{len(statements)} statements in one request; at most {most}"
                       f"{' with explain' if explain_tokens else ''}: split the request", "too_large")  # fmt: skip
    for index, statement in enumerate(statements):
        if not isinstance(statement, str):
            raise ApiError(422, f"statements[{index}] is {type(statement).__name__}, not a string")
        if not statement.strip():
            raise ApiError(422, f"statements[{index}] is empty")
        try:
            statement.encode("utf-8")
        except UnicodeEncodeError as error:  # JSON's "\ud800" escapes decode to text no UTF-8 answer can carry
            raise ApiError(422, f"statements[{index}] holds an unpaired surrogate ({statement[error.start]!r} at "
                           f"{error.start}); send valid Unicode") from None  # fmt: skip
        if len(statement) > limits.max_chars:
            raise ApiError(413, f"statements[{index}] has {len(statement)} characters; at most {limits.max_chars}",
                           "too_large")  # fmt: skip
    return statements, explain_tokens


class _Metrics:
    def __init__(self, max_batch: int):
        self.registry = prometheus_client.CollectorRegistry()
        seconds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        rows = tuple(sorted({2**k for k in range(max_batch.bit_length())} | {max_batch}))
        options = {"registry": self.registry}
        self.requests = prometheus_client.Counter("lstm_jax_requests", "HTTP requests answered", ["path", "status"],
                                                  **options)  # fmt: skip
        self.latency = prometheus_client.Histogram("lstm_jax_request_duration_seconds", "Time to answer a request",
                                                   ["path"], buckets=seconds, **options)  # fmt: skip
        self.errors = prometheus_client.Counter("lstm_jax_request_errors", "Requests refused or failed", ["reason"],
                                                **options)  # fmt: skip
        self.statements = prometheus_client.Counter("lstm_jax_statements", "Statements predicted", **options)
        self.batch_rows = prometheus_client.Histogram("lstm_jax_batch_rows", "Rows per model call (micro-batch)",
                                                      buckets=rows, **options)  # fmt: skip
        self.batch_latency = prometheus_client.Histogram("lstm_jax_batch_duration_seconds", "Time of one model call",
                                                         buckets=seconds, **options)  # fmt: skip
        self.batch_requests = prometheus_client.Histogram("lstm_jax_batch_requests", "Requests per model call",
                                                          buckets=rows, **options)  # fmt: skip
        self.queue_wait = prometheus_client.Histogram("lstm_jax_queue_seconds", "Time a request waited for its "
                                                      "model call", buckets=seconds, **options)  # fmt: skip

    def observe_batch(self, rows: int, seconds: float, waits: list[float]) -> None:
        self.batch_rows.observe(rows)
        self.batch_latency.observe(seconds)
        self.batch_requests.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(wait)

    def refused(self, reason: str) -> None:
        self.errors.labels(reason).inc()


class Service:
    """The model behind the endpoints: tokenizes, micro-batches, labels and explains."""

    def __init__(self, predictor, vocabulary: Vocabulary, description: dict, threshold: float, limits: Limits,
                 max_batch: int = 64, max_wait: float = 0.0, version: str = ""):  # fmt: skip
        self.vocabulary, self.threshold, self.limits, self.version = vocabulary, threshold, limits, version
        self.description = {**description, "version": version}
        self.max_len = predictor.max_len
        self.scorer = FixedShapeScorer(predictor, max_batch)
        self.metrics = _Metrics(self.scorer.max_batch)
        self.compiled = 0
        self.batcher = MicroBatcher(self.scorer, self.scorer.max_batch, max_wait, self._warm_up,
                                    self.metrics.observe_batch, limits.max_queued_rows)  # fmt: skip
        self.summary = {"format": description.get("format", "checkpoint"), "step": description["model"]["step"],
                        "threshold": threshold, "max_len": self.max_len, "version": version}  # fmt: skip

    def _warm_up(self) -> None:
        started, total = time.perf_counter(), len(self.scorer.shapes)

        def progress(done: int) -> None:
            self.compiled = done
            if done % max(1, total // 4) == 0 and done < total:
                print(f"warming up: {done}/{total} batch shapes", file=sys.stderr, flush=True)

        try:
            self.scorer.warm_up(progress)
        except Exception:
            os.kill(os.getpid(), signal.SIGTERM)  # a server that can never be ready stops; serve() says why, exit 2
            raise
        print(f"ready: {len(self.scorer.shapes)} batch shapes warmed up in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    def health(self) -> tuple[int, dict]:
        if self.batcher.ready.is_set():
            return 200, {"status": "ready", **self.summary}
        if self.batcher.failed is not None:
            return 503, {"status": "failed", "error": f"warm-up failed: {self.batcher.failed}"}
        return 503, {"status": "warming up", "compiled": self.compiled, "shapes": len(self.scorer.shapes)}

    async def predict(self, statements: list[str], explain_tokens: bool) -> list[dict]:
        if not self.batcher.ready.is_set():
            raise ApiError(503, "the model is still warming up; retry when GET /health says ready", "not_ready")
        tokens, lengths = self.vocabulary.encode(statements, self.max_len)
        parts = [(tokens, lengths)]
        if explain_tokens:
            parts += [explain.occluded_rows(row, int(length)) for row, length in zip(tokens, lengths)]
        rows = (np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]))
        try:
            future = self.batcher.submit(*rows)
        except QueueFull:
            raise ApiError(503, "the server is busy (its queue is full); retry shortly", "queue_full",
                           {"Retry-After": "1"}) from None  # fmt: skip
        probabilities = await asyncio.wrap_future(future)
        self.metrics.statements.inc(len(statements))
        predictions = []
        offset = len(statements)
        for index, (statement, probability) in enumerate(zip(statements, probabilities[: len(statements)])):
            prediction = {"statement": statement, "label": "positive" if probability >= self.threshold else "negative",
                          "probability_positive": round(float(probability), 6)}  # fmt: skip
            if explain_tokens:
                length = int(lengths[index])
                occluded = probabilities[offset : offset + length]
                offset += length
                prediction.update(self._explanation(statement, tokens[index], probability, occluded))
            predictions.append(prediction)
        return predictions

    def _explanation(self, statement: str, ids: np.ndarray, probability: float, occluded: np.ndarray) -> dict:
        words = tokenize(statement, rules=self.vocabulary.rules)
        contribution = explain.contributions(probability, occluded)
        read = [{"token": word, "contribution": round(float(value), 6), "known": bool(ids[index] != UNKNOWN_ID)}
                for index, (word, value) in enumerate(zip(words, contribution))]  # fmt: skip
        return {"tokens": read, "tokens_not_read": len(words) - len(read)}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (declared, or streamed in chunks)."""
    too_large = ApiError(413, f"the body is over {limit} bytes; send fewer or shorter statements", "too_large")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:  # the client's doing: counted apart, never logged as the server's error
        raise ApiError(499, "the client closed the connection before sending the whole body",
                       "client_disconnected") from None  # fmt: skip
    return bytes(body)


def _require_json(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"the body must be sent as Content-Type: application/json, not {kind[:60] or 'none'}",
                       "unsupported_media_type")  # fmt: skip


class _Counted:
    """Counts every answer by path and status and times it (plain ASGI: Starlette's ``BaseHTTPMiddleware``
    costs about 0.2 ms a request)."""

    def __init__(self, app, metrics: _Metrics, version: str):
        self.app, self.metrics = app, metrics
        self.version_header = (b"x-model-version", version.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), self.version_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def _web_file(name: str) -> bytes:
    return (importlib.resources.files("lstm_jax.sentiment.serve") / "web" / name).read_bytes()


def create_app(service: Service, allowed_hosts: set[str] | None = None, token: str | None = None) -> FastAPI:
    """The FastAPI app serving ``service`` (see :class:`.server.Guard` for ``allowed_hosts`` and ``token``); its
    lifespan starts the micro-batcher and drains it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        service.batcher.close()  # after uvicorn has finished every in-flight request

    app = FastAPI(title="lstm_jax sentiment", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = service.metrics
    pages = {path: (_web_file(name), media) for path, (name, media) in WEB_FILES.items()}

    app.add_middleware(server.Guard, allowed_hosts=allowed_hosts, token=token, refused=metrics.refused)
    app.add_middleware(_Counted, metrics=metrics, version=service.version)  # outermost: counts the guard's answers

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError):
        metrics.refused(error.reason)
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def not_found(request: Request, error: HTTPException):
        metrics.errors.labels("bad_request").inc()
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception):
        metrics.errors.labels("internal").inc()
        return JSONResponse({"error": f"internal error ({type(error).__name__}: {error})"}, status_code=500)

    @app.post("/predict")
    async def predict(request: Request):
        _require_json(request)
        statements, explain_tokens = parse_request(await _read_body(request, service.limits.max_body_bytes),
                                                   service.limits)  # fmt: skip
        answer = {"predictions": await service.predict(statements, explain_tokens), "model": service.summary}
        return JSONResponse(answer)  # plain JSON types already: skips FastAPI's slower jsonable_encoder

    @app.get("/livez")
    async def alive():
        return {"status": "alive"}

    async def ready():
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    app.add_api_route("/readyz", ready, methods=["GET"])
    app.add_api_route("/health", ready, methods=["GET"])

    @app.get("/model")
    async def model():
        return service.description

    @app.get("/metrics")
    async def prometheus():
        return Response(prometheus_client.generate_latest(metrics.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)  # fmt: skip

    for path, (content, media) in pages.items():
        app.add_api_route(path, lambda content=content, media=media: Response(content, media_type=media),
                          methods=["GET"])  # fmt: skip
    return app


def load_service(workdir: str | None = None, model: str | None = None, model_format: str | None = None,
                 step: int | None = None, threshold: float | None = None, cache: str = "", max_batch: int = 64,
                 max_wait: float = 0.0, limits: Limits = Limits()) -> Service:  # fmt: skip
    """The service for a checkpoint (``workdir``) or an exported folder (``model``), not yet warmed up: the one
    loader (:func:`~lstm_jax.sentiment.deploy.predictor.load`) with JAX's compilation cache ``cache``."""
    from lstm_jax.sentiment.deploy.predictor import load  # no Flax, no orbax unless a checkpoint is loaded
    from lstm_jax.sentiment.process.cli import enable_compilation_cache

    predictor = load(workdir=workdir, model=model, model_format=model_format, step=step, batch_size=max_batch,
                     threshold=threshold, before_jax=lambda: enable_compilation_cache(cache))  # fmt: skip
    return Service(predictor, predictor.vocabulary, predictor.description, predictor.threshold, limits, max_batch,
                   max_wait, model_version(model, predictor))  # fmt: skip


def model_version(folder: str | None, predictor) -> str:
    """``sha256:<hex>`` of the exported manifest (it holds every file's digest), or of a checkpoint's weights."""
    digest = hashlib.sha256()
    if folder:
        from lstm_jax.sentiment.deploy.artifacts import MANIFEST, read_file  # as the loader read it: capped, no links

        digest.update(read_file(Path(folder), MANIFEST))
    else:
        from lstm_jax.sentiment.deploy.export import named_weights

        for name, weight in sorted(named_weights(predictor.model).items()):
            digest.update(name.encode() + np.ascontiguousarray(weight).tobytes())
    return f"sha256:{digest.hexdigest()}"


def serve(service: Service, host: str, port: int, bounds: server.Bounds = server.Bounds(),
          allowed_hosts: set[str] | None = None, token: str | None = None, tls: tuple[str, str] | None = None) -> None:
    """Listens on ``host:port`` until SIGTERM, Ctrl-C or SIGHUP, then finishes the requests in flight and returns."""
    listener = server.listen(host, port)
    print(f"serving {server.url(host, listener.getsockname()[1], bool(tls))} (warming up "
          f"{len(service.scorer.shapes)} batch shapes)", file=sys.stderr, flush=True)  # fmt: skip
    server.run(create_app(service, allowed_hosts, token), listener, bounds, service.metrics.refused, tls)
    failure = service.batcher.failed
    if failure is not None:
        reason = (str(failure).splitlines() or ["no message"])[0][:200]
        raise UserError(f"warm-up failed ({type(failure).__name__}: {reason}); the model cannot serve: export it again")
