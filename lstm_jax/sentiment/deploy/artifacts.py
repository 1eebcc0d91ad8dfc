"""Exported models: load a folder written by ``export.py`` and predict, with JAX and NumPy only (or ONNX Runtime).

The folder (format version :data:`FORMAT_VERSION`):

* ``manifest.json``: format version, the formats inside, model and config summary, input signature, tokenizer
  settings (``max_len``, ``length_bucket``), the threshold, the lstm_jax and jax versions that wrote it and
  the SHA-256 of every file below;
* ``vocabulary.json``: the words (id ``i + 2`` is ``words[i]``; 0 padding, 1 unknown), as in a checkpoint;
* ``model.stablehlo`` + ``weights.npz``: the inference function serialized by ``jax.export`` with symbolic
  batch and time (``weights, tokens <int32>[b, t], lengths <int32>[b] -> probabilities <float32>[b]``, lowered
  for ``cpu`` and ``cuda``) and its weights by name, in the order the manifest lists;
* ``model.onnx``: the same function as an ONNX graph (native ``LSTM`` / ``GRU`` / ``RNN`` operators with
  ``sequence_lens``), inputs ``tokens <int32>[batch, time]`` and ``lengths <int32>[batch]``.

This module imports neither Flax nor orbax nor the model code: a deployment needs ``jax`` and ``numpy`` (for
StableHLO) or ``onnxruntime`` and ``numpy`` (for ONNX) and this package's tokenizer.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lstm_jax.sentiment import batching
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import TOKENIZERS, Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = {"stablehlo": ("model.stablehlo", "weights.npz"), "onnx": ("model.onnx",)}
FASTEST_FIRST = ("onnx", "stablehlo")  # measured: benchmarks/export_speed.py


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest, checked: a known version, and every file it lists present with its recorded digest."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"exported model {folder} does not exist; write one with: python export.py --output {folder}")
    try:
        manifest = json.loads(path.read_text())
        version, formats, digests = manifest["format_version"], manifest["formats"], manifest["sha256"]
    except FileNotFoundError:
        raise UserError(f"{folder} has no {MANIFEST}: not an exported model; write one with python export.py") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {error}); export the model again") from None
    if version != FORMAT_VERSION:
        raise UserError(f"{folder} has format version {version!r}; this lstm_jax reads version {FORMAT_VERSION}: "
                        "export it again with this version")  # fmt: skip
    for name, expected in digests.items():
        file = folder / name
        try:
            actual = sha256(file)
        except OSError as error:
            raise UserError(f"cannot read {file} ({error.strerror}); export the model again") from None
        if actual != expected:
            raise UserError(f"{file} is damaged (its SHA-256 differs from the manifest's); export the model again")
    if not formats or any(name not in FILES for name in formats):
        raise UserError(f"{path} lists unknown formats {formats!r}; export the model again")
    problem = _manifest_problem(manifest)
    if problem:
        raise UserError(f"{path} is damaged ({problem}); export the model again")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the manifest's settings (they are not covered by the digests), or None."""

    def whole(value, least, most):
        return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most

    tokenizer, model = manifest.get("tokenizer"), manifest.get("model")
    if not isinstance(tokenizer, dict) or not isinstance(model, dict):
        return "no tokenizer or model section"
    if not whole(tokenizer.get("max_len"), 1, 100_000) or not whole(tokenizer.get("length_bucket"), 0, 100_000):
        return f"tokenizer max_len {tokenizer.get('max_len')!r} / length_bucket {tokenizer.get('length_bucket')!r}"
    if tokenizer.get("name") not in TOKENIZERS:
        return f"tokenizer {tokenizer.get('name')!r} is not one of {', '.join(TOKENIZERS)}"
    threshold = manifest.get("threshold")
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        return f"threshold {threshold!r} is not a number from 0 to 1"
    if not whole(model.get("vocab_size"), 3, 10_000_000):
        return f"vocab_size {model.get('vocab_size')!r}"
    weights = manifest.get("weights", [])
    if "stablehlo" in manifest["formats"] and (not weights or not all(isinstance(name, str) for name in weights)):
        return "the StableHLO weights are not listed by name"
    return None


class DeployedModel:
    """``predict(texts) -> <float32>[n]`` probabilities of positive, from an exported folder.

    Texts are encoded with the vocabulary and ``max_len`` the model was trained with, and batched like the
    checkpoint's predictor (sorted by length, each batch padded to its longest text rounded up to the length
    bucket); results come back in input order.
    """

    def __init__(self, folder: Path, manifest: dict, vocabulary: Vocabulary, run_batch, model_format: str,
                 batch_size: int = 256):  # fmt: skip
        self.folder, self.manifest, self.vocabulary = folder, manifest, vocabulary
        self.format = model_format
        self.max_len = int(manifest["tokenizer"]["max_len"])
        self.length_bucket = int(manifest["tokenizer"]["length_bucket"])
        self.threshold = float(manifest["threshold"])
        self.batch_size = batch_size
        self.chunk_size = 8 * batch_size
        self._run_batch = run_batch

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        tokens, lengths = self.vocabulary.encode(texts, self.max_len)
        # No filler rows: the artifacts take any batch size.
        return batching.run_in_batches(self.run_batch, tokens, lengths, self.batch_size, self.length_bucket,
                                       self.max_len, fill=False)  # fmt: skip

    batch_multiple = 1  # the artifacts take any batch size

    def run_batch(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Probabilities of one encoded batch: ``tokens <int32>[b, t]``, ``lengths <int32>[b]``."""
        return self._run_batch(tokens, lengths)


def _shares(rows: int, parts: int) -> list[np.ndarray]:
    """Row indices of a batch in at most ``parts`` nearly equal, non-empty shares (one per device or core)."""
    return np.array_split(np.arange(rows), max(1, min(parts, rows)))


def _stablehlo_runner(folder: Path, manifest: dict):
    """Runs the artifact on every local device, each on its share of the batch's rows.

    The artifact is lowered for one device; a CPU started with ``--xla_force_host_platform_device_count`` equal
    to its cores (as ``predict.py`` does) then runs one share per core, as the checkpoint's predictor does.
    """
    import jax  # only here: an ONNX deployment needs no JAX

    devices = jax.local_devices()
    try:
        exported = jax.export.deserialize(bytearray((folder / "model.stablehlo").read_bytes()))
        with np.load(folder / "weights.npz") as archive:
            arrays = [archive[name] for name in manifest["weights"]]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{folder} holds a damaged StableHLO model ({error}); export the model again") from None
    expected = [tuple(aval.shape) for aval in exported.in_avals[: len(exported.in_avals) - 2]]  # then tokens, lengths
    if expected != [array.shape for array in arrays]:
        raise UserError(f"{folder}: the weights the manifest lists do not fit the StableHLO model's inputs "
                        f"({len(arrays)} arrays for {len(expected)} inputs, or other shapes); export the model "
                        "again")  # fmt: skip
    weights = [tuple(jax.device_put(array, device) for array in arrays) for device in devices]
    call = jax.jit(exported.call)

    def run(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        results = [call(weights[index], *jax.device_put((tokens[rows], lengths[rows]), devices[index]))
                   for index, rows in enumerate(_shares(len(tokens), len(devices)))]  # the devices run together
        return np.concatenate([np.asarray(result) for result in results])

    return run


def _onnx_runner(folder: Path, manifest: dict):
    """Runs each batch's rows in one share per core, each share on one thread of ONNX Runtime.

    Measured on 2 cores (batch 256): 1.7x the statements/s of one call with 2 intra-op threads for the default
    bidirectional GRU, 1.2x for an LSTM of 128: the recurrent operators parallelise poorly inside one call.
    """
    try:
        import onnxruntime
    except ImportError:
        raise UserError("reading an ONNX model needs onnxruntime: pip install 'lstm_jax[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise UserError(f"{folder / 'model.onnx'} cannot be loaded ({error}); export the model again") from None
    workers = os.cpu_count() or 1
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None  # ONNX Runtime releases the GIL

    def run_share(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(None, {"tokens": tokens, "lengths": lengths})[0]

    def run(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        shares = _shares(len(tokens), workers)
        if pool is None or len(shares) == 1:
            return run_share(tokens, lengths)
        futures = [pool.submit(run_share, tokens[rows], lengths[rows]) for rows in shares]
        return np.concatenate([future.result() for future in futures])

    return run


_RUNNERS = {"stablehlo": _stablehlo_runner, "onnx": _onnx_runner}


def _available(model_format: str) -> bool:
    module = "onnxruntime" if model_format == "onnx" else "jax"
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def load(folder: str | Path, model_format: str | None = None, batch_size: int = 256) -> DeployedModel:
    """The exported model in ``folder``; ``model_format`` picks one of its formats (default: the fastest one
    this machine can run)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    formats = manifest["formats"]
    if model_format is None:
        runnable = [name for name in FASTEST_FIRST if name in formats and _available(name)]
        model_format = runnable[0] if runnable else formats[0]
    elif model_format not in formats:
        raise UserError(f"{folder} holds {', '.join(formats)}, not {model_format}; export with --format {model_format}")
    try:
        words = json.loads((folder / "vocabulary.json").read_text())
        vocabulary = Vocabulary.from_json([str(word) for word in words], manifest["tokenizer"]["name"])
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"{folder / 'vocabulary.json'} is damaged ({error}); export the model again") from None
    if vocabulary.size != manifest["model"]["vocab_size"]:
        raise UserError(f"{folder / 'vocabulary.json'} does not match the model's vocabulary size; export it again")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    runner = _RUNNERS[model_format](folder, manifest)
    return DeployedModel(folder, manifest, vocabulary, runner, model_format, batch_size)
