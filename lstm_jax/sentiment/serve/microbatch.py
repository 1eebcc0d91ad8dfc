"""Micro-batching for the prediction service: concurrent requests share one model call.

Each request hands :class:`MicroBatcher` its encoded rows and gets a future back. One worker thread takes the
first waiting request, gathers more until it holds ``max_batch`` rows or ``max_wait`` seconds have passed
since that first one, scores them all with :class:`FixedShapeScorer` and hands each request its own slice.
While the worker is busy, new requests queue up, so under load batches fill without anybody waiting.

:class:`FixedShapeScorer` pads every call to one of a few shapes (``batch_multiple * 2**k`` rows up to
``max_batch``, times every padded length bucket), all compiled by :meth:`FixedShapeScorer.warm_up` before
the service reports ready: no request pays compile time.

The queue is bounded: past ``max_queued_rows`` rows waiting, :meth:`MicroBatcher.submit` raises
:class:`QueueFull` (the service answers 503 with ``Retry-After``) instead of letting every answer grow late.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from lstm_jax.sentiment import batching


class SupportsRunBatch(Protocol):
    """The one :class:`~lstm_jax.sentiment.deploy.predictor.Predictor`, for a checkpoint or an exported folder."""

    max_len: int
    length_bucket: int
    batch_multiple: int

    def run_batch(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


class FixedShapeScorer:
    """``scorer(tokens <int32>[n, max_len], lengths <int32>[n]) -> <float32>[n]`` in compiled shapes only."""

    def __init__(self, predictor: SupportsRunBatch, max_batch: int):
        multiple = predictor.batch_multiple
        self.predictor = predictor
        self.max_batch = -(-max_batch // multiple) * multiple
        sizes, size = [], multiple
        while size < self.max_batch:
            sizes.append(size)
            size *= 2
        self.batch_sizes = [*sizes, self.max_batch]
        self.times = batching.bucket_sizes(predictor.length_bucket, predictor.max_len)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(rows, steps) for rows in self.batch_sizes for steps in self.times]

    def warm_up(self, progress: Callable[[int], None] = lambda done: None) -> None:
        """Runs every shape once (compiling it, or loading it from JAX's persistent cache)."""
        for done, (rows, steps) in enumerate(self.shapes, 1):
            self.predictor.run_batch(np.ones((rows, steps), np.int32), np.full(rows, steps, np.int32))
            progress(done)

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        count = len(lengths)
        size = next((size for size in self.batch_sizes if size >= count), self.max_batch)
        predictor = self.predictor
        return batching.run_in_batches(predictor.run_batch, tokens, lengths, size, predictor.length_bucket,
                                       predictor.max_len)  # fmt: skip


class QueueFull(Exception):
    """More rows are waiting than the batcher accepts."""


@dataclasses.dataclass
class _Request:
    tokens: np.ndarray
    lengths: np.ndarray
    future: concurrent.futures.Future
    queued: float = dataclasses.field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers concurrent requests' rows into shared model calls on one worker thread.

    ``observe(rows, seconds, waits)`` is called after every model call with the seconds each of its requests
    waited in the queue (the service's metrics). The worker first runs ``warm_up`` (so model calls never race
    it), then sets :attr:`ready`.
    """

    def __init__(self, score: Callable[[np.ndarray, np.ndarray], np.ndarray], max_batch: int, max_wait: float,
                 warm_up: Callable[[], None] = lambda: None,
                 observe: Callable[[int, float, list[float]], None] = lambda rows, seconds, waits: None,
                 max_queued_rows: int = 1 << 14):  # fmt: skip
        self.max_batch, self.max_wait, self.max_queued_rows = max_batch, max_wait, max_queued_rows
        self._queued_rows, self._count_lock = 0, threading.Lock()
        self.ready = threading.Event()
        self.failed: BaseException | None = None  # set when warm-up failed: the service reports it on /health
        self._score, self._warm_up, self._observe = score, warm_up, observe
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, tokens: np.ndarray, lengths: np.ndarray) -> concurrent.futures.Future:
        """A future of ``<float32>[len(lengths)]``: the probabilities of exactly these rows, in order; or
        :class:`QueueFull` (a request alone in the queue is always taken, however large)."""
        with self._count_lock:
            if self._queued_rows and self._queued_rows + len(lengths) > self.max_queued_rows:
                raise QueueFull(f"{self._queued_rows} rows are waiting")
            self._queued_rows += len(lengths)
        request = _Request(tokens, lengths, concurrent.futures.Future())
        self._queue.put(request)
        return request.future

    def _taken(self, request: _Request) -> None:
        with self._count_lock:
            self._queued_rows -= len(request.lengths)

    def close(self) -> None:
        """Scores what is queued, then stops the worker."""
        self._queue.put(None)
        self._thread.join()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` and the requests that arrive within ``max_wait`` (up to ``max_batch`` rows); and whether
        the stop signal came meanwhile."""
        requests, rows = [first], len(first.lengths)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            try:
                request = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if request is None:
                return requests, True
            self._taken(request)
            requests.append(request)
            rows += len(request.lengths)
        return requests, False

    def _run(self, requests: list[_Request]) -> None:
        started = time.perf_counter()
        waits = [started - request.queued for request in requests]
        try:
            probabilities = self._score(np.concatenate([request.tokens for request in requests]),
                                        np.concatenate([request.lengths for request in requests]))  # fmt: skip
        except Exception as error:  # one failed call fails its requests, never the worker
            for request in requests:
                request.future.set_exception(error)
            return
        self._observe(len(probabilities), time.perf_counter() - started, waits)
        offsets = np.cumsum([0] + [len(request.lengths) for request in requests])
        for request, start, stop in zip(requests, offsets[:-1], offsets[1:]):
            request.future.set_result(probabilities[start:stop])

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception as error:
            self.failed = error
            return
        self.ready.set()
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            self._taken(first)
            requests, stopping = self._gather(first)
            self._run(requests)
