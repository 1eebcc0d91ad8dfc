"""Exported models without the training stack: ``lstm_jax.deploy.load(folder).predict(texts)``.

The code lives with the sentiment job (:mod:`lstm_jax.sentiment.deploy.artifacts`), whose tokenizer it
uses; this name is the short public one. Importing it loads NumPy and the tokenizer only;
JAX (StableHLO) or ONNX Runtime (ONNX) on the first ``load``.
"""

from lstm_jax.sentiment.deploy.artifacts import FORMAT_VERSION, DeployedModel, load

__all__ = ["FORMAT_VERSION", "DeployedModel", "load"]
