"""Exported models without the training stack: ``lstm_jax.deploy.load(folder).predict(texts)``.

The one documented entry for a folder written by ``export.py``. The code is the sentiment job's one prediction
path (:func:`lstm_jax.sentiment.deploy.predictor.load`), whose tokenizer it uses. Importing it loads NumPy and the
tokenizer only; JAX (StableHLO) or ONNX Runtime (ONNX) on the first ``load``. The folder is checked as untrusted
input (see :mod:`lstm_jax.sentiment.deploy.artifacts`); a StableHLO file is code, so take artifacts from others
as ONNX.
"""

from __future__ import annotations

from pathlib import Path

from lstm_jax.sentiment.deploy import predictor as _predictor
from lstm_jax.sentiment.deploy.artifacts import FORMAT_VERSION

DeployedModel = _predictor.Predictor  # the one predictor class, under the name this module always gave it


def load(folder: str | Path, model_format: str | None = None, batch_size: int = 256) -> DeployedModel:
    """The exported model in ``folder``; ``model_format`` picks one of its formats (default: the fastest one
    this machine can run). ``load(folder).predict(["a fine film"])`` gives the probabilities of positive."""
    return _predictor.load(model=folder, model_format=model_format, batch_size=batch_size)


__all__ = ["FORMAT_VERSION", "DeployedModel", "load"]
