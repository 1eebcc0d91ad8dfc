"""What the one predictor (:mod:`.predictor`) runs: a checkpoint's model, a StableHLO artifact or an ONNX graph.

A :class:`Runner` scores one encoded batch; :func:`split_rows` is the one way a batch is shared out over devices
or cores. Imports NumPy only, so an ONNX deployment loads neither JAX nor Flax.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Runner:
    """``run_batch(tokens <int32>[b, t], lengths <int32>[b]) -> <float32>[b]`` for one model format."""

    format: str  # "checkpoint", "stablehlo" or "onnx"
    run_batch: Callable[[np.ndarray, np.ndarray], np.ndarray]
    batch_multiple: int = 1  # rows of a batch must be a multiple of this (a checkpoint: the device count)
    fills_batches: bool = False  # a short last batch is filled to a compiled shape rather than cut
    model: Callable[[], Any] | None = None  # the checkpoint's NNX model, rebuilt on request


def split_rows(run_share: Callable, tokens: np.ndarray, lengths: np.ndarray, parts: int,
               pool: concurrent.futures.Executor | None = None) -> np.ndarray:  # fmt: skip
    """``run_share(index, tokens, lengths)`` on at most ``parts`` nearly equal shares of the rows, all started
    before any result is awaited (JAX dispatches asynchronously; ``pool`` runs shares on threads); the results
    joined in row order."""
    shares = np.array_split(np.arange(len(tokens)), max(1, min(parts, len(tokens))))
    if len(shares) == 1:
        return np.asarray(run_share(0, tokens, lengths))
    if pool is None:
        results = [run_share(index, tokens[rows], lengths[rows]) for index, rows in enumerate(shares)]
    else:
        futures = [pool.submit(run_share, index, tokens[rows], lengths[rows]) for index, rows in enumerate(shares)]
        results = [future.result() for future in futures]
    return np.concatenate([np.asarray(result) for result in results])
