"""A checkpoint's model, ready to predict (library; the command line is ../../predict.py).

:func:`restore_model` rebuilds the model, its vocabulary and ``max_len`` from the checkpoint's metadata (no
config file); :func:`checkpoint_runner` is the checkpoint's runner for the one :class:`.predictor.Predictor`.
``load_predictor(workdir)`` is :func:`.predictor.load` for a checkpoint; ``predict_file`` (from
:mod:`.statements`) streams a text file through any predictor.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.config import base_config, validate
from lstm_jax.sentiment.deploy.predictor import Predictor, load
from lstm_jax.sentiment.deploy.runners import Runner
from lstm_jax.sentiment.deploy.statements import FORMATS, predict_file  # noqa: F401  (predict_file: the job's API)
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.classifier import build_model, model_kwargs
from lstm_jax.sentiment.tokenizer import Vocabulary


def checkpoint_runner(model: nnx.Module) -> Runner:
    """Runs ``model`` with its batches split over all local devices (parameters replicated): on a CPU started
    with ``--xla_force_host_platform_device_count`` equal to its cores, as ``predict.py`` does, every core runs
    its share of the recurrence. Each new batch shape compiles once; short batches are filled to a compiled one."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def run_batch(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        inputs = jax.device_put((tokens, lengths), batch_sharding)
        return np.asarray(_probabilities(graphdef, params, *inputs))

    return Runner("checkpoint", run_batch, len(devices), fills_batches=True, model=lambda: nnx.merge(graphdef, params))


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(graphdef, params, tokens, lengths):
    return jax.nn.sigmoid(nnx.merge(graphdef, params)(tokens, lengths))


def _checked_settings(meta: dict) -> tuple[dict, Vocabulary, int, int]:
    """(model arguments, vocabulary, max_len, length_bucket) from a checkpoint's metadata, validated like a
    config before anything is built (a hostile file could ask for a 200,000-member ensemble)."""
    config = base_config()
    config.update(meta["config"])
    # The backend decides how, not what, the model computes: a run trained with cuDNN on a GPU predicts here
    # with whatever this machine runs best.
    config.backend = "auto"
    validate(config)
    vocabulary = Vocabulary.from_json([str(word) for word in meta["vocabulary"]], config.tokenizer)
    kwargs, settings = {**meta["model_kwargs"], "backend": "auto"}, meta["data"]
    # The tables' sizes the data decided: at most one row per bucket + 1, one per vocabulary id.
    sizes = {key: kwargs.get(key, default) for key, default in ckpt.ADDED_DATA_SETTINGS.items()}
    limits = {"subword_rows": config.subword_buckets + 1 if config.subword_buckets else 0,
              "trained_rows": vocabulary.size}  # fmt: skip
    for key, most in limits.items():
        if type(sizes[key]) is not int or not 0 <= sizes[key] <= most:
            raise ValueError(f"{key}={sizes[key]!r} must be between 0 and {most}")
    if kwargs != model_kwargs(config, vocabulary.size, **sizes):
        raise ValueError("the model arguments disagree with the config")
    if (settings["max_len"], settings["length_bucket"]) != (config.max_len, config.length_bucket):
        raise ValueError("the data settings disagree with the config")
    if settings["tokenizer"] != config.tokenizer:
        raise ValueError(f"the data settings' tokenizer {settings['tokenizer']!r} disagrees with the config's")
    return kwargs, vocabulary, config.max_len, config.length_bucket


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """A trained model rebuilt from a checkpoint, with what prediction needs beside it."""

    model: nnx.Module
    model_kwargs: dict  # the constructor arguments (backend "auto")
    vocabulary: Vocabulary
    max_len: int
    length_bucket: int
    step: int
    meta: dict  # the checkpoint's metadata (config, data settings, history)


def restore_model(workdir: str | Path, step: int | None = None) -> RestoredModel:
    """The trained model of ``workdir`` (best checkpoint unless ``step`` is given), checked to be finite."""
    run, manager, step = ckpt.find(workdir, step)
    meta = run.read_meta(step, manager)
    where = f"checkpoint {step} in {manager.directory}"
    try:
        kwargs, vocabulary, max_len, length_bucket = _checked_settings(meta)
    except UserError as error:
        raise UserError(f"{where} has invalid settings: {error}; retrain") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{where} has invalid metadata ({error}); retrain") from None
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(kwargs, nnx.Rngs(0))))
    params = ckpt.restore_weights(run, manager, step, abstract, meta.get("inference_item", "params"), meta)
    if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params)):
        raise UserError(f"{where} has non-finite weights (the run diverged); choose another --step or retrain")
    return RestoredModel(nnx.merge(graphdef, params), kwargs, vocabulary, max_len, length_bucket, step, meta)


def load_predictor(workdir: str | Path, step: int | None = None, batch_size: int = 256) -> Predictor:
    """The checkpoint's predictor (best checkpoint unless ``step`` is given): :func:`.predictor.load` with
    ``workdir``."""
    return load(workdir=workdir, step=step, batch_size=batch_size)


def describe(restored: RestoredModel, threshold: float) -> dict:
    """What a manifest says about a model, for a checkpoint too (the service's ``GET /model``)."""
    from lstm_jax.sentiment.deploy.export import describe as description  # the manifest's writer says what it holds

    return description(restored, threshold)
