"""Prediction from a checkpoint alone (library; the command line is ../../predict.py).

``load_predictor(workdir)`` rebuilds the model, its vocabulary and ``max_len`` from the checkpoint's
metadata (no config file) and returns a :class:`Predictor` whose ``predict(texts)`` gives the probability
of positive sentiment. ``predict_file`` streams a text file (one statement per line) through it in batches
and writes the predictions to a temporary file that is renamed into place only when complete.

Input rules (see :mod:`.files`): a byte-order mark selects UTF-8, UTF-16 or UTF-32, else UTF-8; surrounding
whitespace is stripped; empty lines are skipped and counted; undecodable bytes are replaced with U+FFFD and
the lines counted in a warning (the rest of the line is still predicted); a line longer than ``max_len``
tokens is truncated like training data (and one over 1 MiB is cut there while reading).
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from lstm_jax.sentiment import batching, files
from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.config import base_config, validate
from lstm_jax.sentiment.errors import UserError, raise_if_interrupted
from lstm_jax.sentiment.model import build_model, model_kwargs
from lstm_jax.sentiment.tokenizer import Vocabulary

FORMATS = ("txt", "jsonl", "csv")


class Predictor:
    """``predict(texts) -> <float32>[n]`` probabilities of positive, in fixed-size jitted batches.

    Texts are encoded a chunk at a time and batched by :mod:`.batching` like evaluation data: sorted by
    length, each batch padded to its longest text rounded up to the checkpoint's ``length_bucket``, so only
    a few shapes ever compile; results come back in input order. Batches are split over all local devices
    (parameters replicated): on a CPU started with ``--xla_force_host_platform_device_count`` equal to its
    cores, as ``predict.py`` does, every core runs its share of the recurrence.
    """

    def __init__(self, model: nnx.Module, vocabulary: Vocabulary, max_len: int, batch_size: int = 256,
                 length_bucket: int = 16):  # fmt: skip
        devices = jax.local_devices()
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self.batch_size = -(-batch_size // len(devices)) * len(devices)  # a multiple of the device count
        self.chunk_size = 8 * self.batch_size  # texts read per predict() call: room to sort them by length
        self.vocabulary, self.max_len, self.length_bucket = vocabulary, max_len, length_bucket
        self._graphdef, params = nnx.split(model)
        self._params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    @property
    def model(self) -> nnx.Module:
        """The restored model (a new NNX object sharing the predictor's weights)."""
        return nnx.merge(self._graphdef, self._params)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        tokens, lengths = self.vocabulary.encode(texts, self.max_len)
        plan = batching.plan_batches(lengths, self.batch_size, self.length_bucket, self.max_len)
        probabilities = np.zeros(len(texts), np.float32)
        examples = {"tokens": tokens, "lengths": lengths}
        for indices, time in zip(plan.indices, plan.time):
            batch = batching.take_batch(examples, indices, time)
            inputs = jax.device_put((batch["tokens"], batch["lengths"]), self._batch_sharding)
            output = np.asarray(_probabilities(self._graphdef, self._params, *inputs))
            probabilities[indices[indices >= 0]] = output[indices >= 0]
        return probabilities


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
    vocabulary = Vocabulary.from_json([str(word) for word in meta["vocabulary"]])
    kwargs, settings = {**meta["model_kwargs"], "backend": "auto"}, meta["data"]
    if kwargs != model_kwargs(config, vocabulary.size):
        raise ValueError("the model arguments disagree with the config")
    if (settings["max_len"], settings["length_bucket"]) != (config.max_len, config.length_bucket):
        raise ValueError("the data settings disagree with the config")
    if settings["tokenizer"] != ckpt.TOKENIZER:
        raise ValueError(f"tokenizer {settings['tokenizer']!r}, this lstm_jax has {ckpt.TOKENIZER!r}")
    return kwargs, vocabulary, config.max_len, config.length_bucket


def load_predictor(workdir: str | Path, step: int | None = None, batch_size: int = 256) -> Predictor:
    """Rebuilds the trained model from ``workdir`` alone (best checkpoint unless ``step`` is given)."""
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
    return Predictor(nnx.merge(graphdef, params), vocabulary, max_len, batch_size, length_bucket)


class _InputStats:
    def __init__(self):
        self.statements = self.empty = self.invalid_utf8 = 0


def _statements(stream, stats: _InputStats, progress) -> Iterator[str]:
    for line, size, replaced in files.read_lines(stream):
        progress.update(size)
        stats.invalid_utf8 += replaced
        line = line.strip()
        if not line:
            stats.empty += 1
            continue
        stats.statements += 1
        yield line


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _writer(handle, output_format: str):
    """Returns write(statement, probability, positive) for one output format."""
    if output_format == "txt":

        def write(text, probability, positive):
            sentiment = "positive" if positive else "negative"
            handle.write(f"Statement: {text}\nPredicted Sentiment: {sentiment}\n-----\n")

    elif output_format == "jsonl":

        def write(text, probability, positive):
            record = {
                "statement": text,
                "sentiment": "positive" if positive else "negative",
                "probability_positive": round(float(probability), 6),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    else:
        table = csv.writer(handle)
        table.writerow(["statement", "sentiment", "probability_positive"])

        def write(text, probability, positive):
            table.writerow([text, "positive" if positive else "negative", f"{float(probability):.6f}"])

    return write


def predict_file(
    predictor: Predictor, input_path: str, output: str | Path, output_format: str = "txt", threshold: float = 0.5
) -> dict:
    """Streams ``input_path`` (``-`` = stdin) to ``output`` (``-`` = stdout); returns counts.

    The output is written as :class:`~lstm_jax.sentiment.files.SafeOutput` does: never over the input, never
    half-written, devices and links written through."""
    if output_format not in FORMATS:
        raise UserError(f"unknown format {output_format!r}; use one of {', '.join(FORMATS)}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold must be between 0 and 1, got {threshold}")
    destination = files.SafeOutput(output, inputs=(input_path,))
    if input_path == "-":
        stream, size = sys.stdin.buffer, None
    else:
        path = Path(input_path)
        if not path.is_file():
            raise UserError(f"input {path} does not exist or is not a file; give a text file, one statement per line")
        try:
            stream, size = open(path, "rb"), path.stat().st_size
        except OSError as error:
            raise UserError(f"cannot read input {path} ({error.strerror}); check its permissions") from None
    stats = _InputStats()
    # A bar only for inputs over 1 MiB, and (disable=None) only when stderr is a terminal.
    progress = tqdm(total=size, unit="B", unit_scale=True, desc="predicting",
                    disable=True if not size or size < 2**20 else None)  # fmt: skip
    try:
        with stream, destination as handle:
            write = _writer(handle, output_format)
            for batch in _batches(_statements(stream, stats, progress), predictor.chunk_size):
                raise_if_interrupted()
                for text, probability in zip(batch, predictor.predict(batch)):
                    write(text, probability, probability >= threshold)
            if stats.statements == 0:
                raise UserError(
                    f"input {input_path} has no statements ({stats.empty} empty lines); put one statement per line"
                )
    finally:
        progress.close()
    return {"statements": stats.statements, "empty_lines": stats.empty, "invalid_utf8_lines": stats.invalid_utf8}
