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
from ml_collections import ConfigDict

from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.config import base_config, validate
from lstm_jax.sentiment.deploy.predictor import Predictor, load
from lstm_jax.sentiment.deploy.runners import Runner
from lstm_jax.sentiment.deploy.statements import FORMATS, predict_file  # noqa: F401  (predict_file: the job's API)
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.classifier import DataSizes, build_model
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


def _checked_settings(meta: dict) -> tuple[ConfigDict, DataSizes, Vocabulary]:
    """(config, data sizes, vocabulary) from a checkpoint's metadata, validated like a config before anything is
    built (a hostile file could ask for tables of billions of rows)."""
    config = base_config()
    config.update(meta["config"])
    # The backend decides how, not what, the model computes: a run trained with cuDNN on a GPU predicts here
    # with whatever this machine runs best.
    config.backend = "auto"
    validate(config)
    vocabulary = Vocabulary.from_json([str(word) for word in meta["vocabulary"]], config.tokenizer)
    sizes = DataSizes(vocabulary.size, **{key: meta["sizes"][key] for key in ("subword_rows", "trained_rows")})
    # The tables' sizes the data decided: at most one row per bucket + 1, one per vocabulary id.
    limits = {"subword_rows": config.subword_buckets + 1 if config.subword_buckets else 0,
              "trained_rows": vocabulary.size}  # fmt: skip
    for key, most in limits.items():
        if type(getattr(sizes, key)) is not int or not 0 <= getattr(sizes, key) <= most:
            raise ValueError(f"{key}={getattr(sizes, key)!r} must be between 0 and {most}")
    return config, sizes, vocabulary


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """A trained model rebuilt from a checkpoint, with what prediction needs beside it."""

    model: nnx.Module
    config: ConfigDict  # the run's config, validated (backend "auto")
    sizes: DataSizes  # the sizes its data decided
    vocabulary: Vocabulary
    max_len: int
    length_bucket: int
    step: int
    meta: dict  # the checkpoint's metadata (config, vocabulary, sizes, history)


def restore_model(workdir: str | Path, step: int | None = None) -> RestoredModel:
    """The trained model of ``workdir`` (best checkpoint unless ``step`` is given), checked to be finite."""
    run, manager, step = ckpt.find(workdir, step)
    meta = run.read_meta(step, manager)
    where = f"checkpoint {step} in {manager.directory}"
    try:
        config, sizes, vocabulary = _checked_settings(meta)
    except UserError as error:
        raise UserError(f"{where} has invalid settings: {error}; retrain") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{where} has invalid metadata ({error}); retrain") from None
    graphdef, params, tables = nnx.split(nnx.eval_shape(lambda: build_model(config, sizes, nnx.Rngs(0))), nnx.Param,
                                         ...)  # fmt: skip
    weights = "ema" if config.ema_decay > 0 else "params"
    restored = ckpt.restore_weights(run, manager, step, {weights: params, "tables": tables}, meta)
    if not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(restored[weights])):
        raise UserError(f"{where} has non-finite weights (the run diverged); choose another --step or retrain")
    model = nnx.merge(graphdef, restored[weights], restored["tables"])
    return RestoredModel(model, config, sizes, vocabulary, config.max_len, config.length_bucket, step, meta)


def load_predictor(workdir: str | Path, step: int | None = None, batch_size: int = 256) -> Predictor:
    """The checkpoint's predictor (best checkpoint unless ``step`` is given): :func:`.predictor.load` with
    ``workdir``."""
    return load(workdir=workdir, step=step, batch_size=batch_size)
