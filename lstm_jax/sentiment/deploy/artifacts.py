"""Exported folders, read as untrusted input: the manifest and files checked, then a StableHLO or ONNX runner.

The folder (format version :data:`FORMAT_VERSION`):

* ``manifest.json``: format version, the formats inside, model and config summary, input signature, tokenizer
  settings (``max_len``, ``length_bucket``), the threshold, the lstm_jax and jax versions that wrote it, the
  SHA-256 of every file below and ``settings_sha256``, the SHA-256 of the manifest's own canonical JSON without
  that key (so an edited setting is refused like an edited file);
* ``vocabulary.json``: the words (id ``i + 2`` is ``words[i]``; 0 padding, 1 unknown), as in a checkpoint;
* ``model.stablehlo`` + ``weights.npz``: the inference function serialized by ``jax.export`` with symbolic
  batch and time (``weights {name: array}, tokens <int32>[b, t], lengths <int32>[b] -> probabilities
  <float32>[b]``, lowered for ``cpu`` and ``cuda``) and its weights by name;
* ``model.onnx``: the same function as an ONNX graph (native ``LSTM`` / ``GRU`` / ``RNN`` operators with
  ``sequence_lens``), inputs ``tokens <int32>[batch, time]`` and ``lengths <int32>[batch]``.

What is refused before anything runs: a file name the format does not define, a link, a device or FIFO, a file
over its size cap, a file without its digest or with another one, settings outside the job's ranges, StableHLO
that calls a custom-call target outside JAX's guaranteed-stable set (a StableHLO file is code, like a SavedModel;
ONNX Runtime's operators are the safer format for artifacts from others), weights that do not fit the module by
name, shape and dtype, non-finite weights, an ONNX graph whose inputs or embedding rows differ from the manifest's.

This module imports neither Flax nor orbax nor the model code: a deployment needs ``jax`` and ``numpy`` (for
StableHLO) or ``onnxruntime`` and ``numpy`` (for ONNX) and this package's tokenizer.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from lstm_jax.sentiment.config import prediction_setting_problem
from lstm_jax.sentiment.deploy.runners import Runner, split_rows
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import TOKENIZERS, Vocabulary

FORMAT_VERSION = 2  # 2: every file's digest required, settings_sha256, StableHLO weights passed by name
MANIFEST, VOCABULARY = "manifest.json", "vocabulary.json"
FILES = {"stablehlo": ("model.stablehlo", "weights.npz"), "onnx": ("model.onnx",)}
# The largest each known file may be: far above any model this job trains (GloVe's 400k x 300 is 0.5 GB).
SIZE_CAPS = {MANIFEST: 1 << 20, VOCABULARY: 256 << 20, "model.stablehlo": 256 << 20, "weights.npz": 4 << 30,
             "model.onnx": 4 << 30}  # fmt: skip
FASTEST_FIRST = ("onnx", "stablehlo")  # measured: benchmarks/export_speed.py
# What the exporter emits when JAX's list is not where this version keeps it.
_EMITTED_CUSTOM_CALLS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "shape_assertion"})


def sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else Path(data).read_bytes()).hexdigest()


def settings_digest(manifest: dict) -> str:
    """The SHA-256 of the manifest's canonical JSON without ``settings_sha256`` (what the exporter writes)."""
    rest = {key: value for key, value in manifest.items() if key != "settings_sha256"}
    return sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def read_file(folder: Path, name: str) -> bytes:
    """The bytes of the known file ``name``: a regular file, not a link, within its size cap (a FIFO or
    ``/dev/zero`` is refused without blocking or reading)."""
    path = folder / name
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; export the model again") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; an exported folder holds regular files only") from None
        raise UserError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise UserError(f"{path} is not a regular file (a folder, device or FIFO); export the model again")
    with os.fdopen(descriptor, "rb") as handle:
        cap = SIZE_CAPS[name]
        data = handle.read(cap + 1) if info.st_size <= cap else b""
    if info.st_size > cap or len(data) > cap:
        raise UserError(f"{path} is over the {cap:,} bytes a {name} may have; export the model again")
    return data


def _check_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    if folder.is_file() and zipfile.is_zipfile(folder):
        raise UserError(f"{folder} is a zip archive, not a folder: unpack it (python -m zipfile -e {folder} DIR) "
                        "and give DIR")  # fmt: skip
    if folder.exists():
        raise UserError(f"{folder} is a file, not a folder written by export.py; give the exported folder")
    raise UserError(f"exported model {folder} does not exist; write one with: python export.py --output {folder}")


def read_manifest(folder: Path) -> dict:
    """The manifest, checked: this format version, known formats, a digest for every file they read, and settings
    covered by ``settings_sha256`` and within the job's ranges. No file but the manifest is read here."""
    _check_folder(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(read_file(folder, MANIFEST))
    except UserError as error:
        if "is missing" in str(error):
            raise UserError(f"{folder} has no {MANIFEST}: not an exported model; write one with export.py") from None
        raise
    except (ValueError, RecursionError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}); export the model again") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version == 1:
        raise UserError(f"{folder} was exported by an earlier lstm_jax (format version 1, its settings not covered "
                        f"by a digest); export it again with this version: python export.py --output {folder}")
    if version != FORMAT_VERSION:
        raise UserError(f"{folder} has format version {version!r}; this lstm_jax reads version {FORMAT_VERSION}: "
                        "export it again with this version")  # fmt: skip
    problem = _structure_problem(manifest) or _settings_problem(manifest)
    if problem:
        raise UserError(f"{path} is damaged ({problem}); export the model again")
    return manifest


def _structure_problem(manifest: dict) -> str | None:
    """What is wrong with the manifest's formats and digests, or None."""
    formats, digests = manifest.get("formats"), manifest.get("sha256")
    if not isinstance(formats, list) or not formats or any(name not in FILES for name in formats):
        return f"formats {formats!r} is not a list of {', '.join(FILES)}"
    if len(set(formats)) != len(formats):
        return f"formats {formats!r} names a format twice"
    if not isinstance(digests, dict):
        return f"sha256 {str(digests)[:40]} is not a table of file names and digests"
    for name, digest in digests.items():
        if name not in SIZE_CAPS or name == MANIFEST:
            return f"it lists {name[:80]!r}, not a file an export holds"
        if not isinstance(digest, str) or not re.fullmatch("[0-9a-f]{64}", digest):
            return f"the digest of {name} is not a SHA-256"
    missing = [name for name in (VOCABULARY, *(file for fmt in formats for file in FILES[fmt])) if name not in digests]
    if missing:
        return f"no digest for {', '.join(missing)}"
    if manifest.get("settings_sha256") != settings_digest(manifest):
        return "its settings differ from what the exporter wrote (settings_sha256)"
    return None


def _settings_problem(manifest: dict) -> str | None:
    """What is wrong with the manifest's settings (each against the job's one table of ranges), or None."""
    tokenizer, model = manifest.get("tokenizer"), manifest.get("model")
    if not isinstance(tokenizer, dict) or not isinstance(model, dict):
        return "no tokenizer or model section"
    for key, value in (*((key, tokenizer.get(key)) for key in ("max_len", "length_bucket")),
                       ("vocab_size", model.get("vocab_size")), ("threshold", manifest.get("threshold"))):  # fmt: skip
        problem = prediction_setting_problem(key, value)
        if problem:
            return problem
    if tokenizer.get("name") not in TOKENIZERS:
        return f"tokenizer {tokenizer.get('name')!r} is not one of {', '.join(TOKENIZERS)}"
    weights = manifest.get("weights", [])
    if "stablehlo" in manifest["formats"] and (not isinstance(weights, list) or not weights
                                               or not all(isinstance(name, str) for name in weights)):  # fmt: skip
        return "the StableHLO weights are not listed by name"
    return None


def read_checked(folder: Path, manifest: dict, name: str) -> bytes:
    """The bytes of ``name``, whose digest the manifest must record and match."""
    data = read_file(folder, name)
    if sha256(data) != manifest["sha256"][name]:
        raise UserError(f"{folder / name} is damaged (its SHA-256 differs from the manifest's); export the model again")
    return data


def read_vocabulary(folder: Path, manifest: dict) -> Vocabulary:
    path = folder / VOCABULARY
    try:
        words = json.loads(read_checked(folder, manifest, VOCABULARY))
    except (ValueError, RecursionError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}); export the model again") from None
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise UserError(f"{path} is not a list of words; export the model again")
    if len(set(words)) != len(words):
        raise UserError(f"{path} lists a word twice (each word has one id); export the model again")
    vocabulary = Vocabulary.from_json(words, manifest["tokenizer"]["name"])
    if vocabulary.size != manifest["model"]["vocab_size"]:
        raise UserError(f"{path} does not match the model's vocabulary size; export the model again")
    return vocabulary


def read_weights(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz``, each header checked against the archive's real size before any is allocated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a .npz archive (a plain .npy?); export the model again") from None
    weights = {}
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.file_size > SIZE_CAPS["weights.npz"]:
                raise UserError(f"{path} holds {info.filename[:80]!r}, not a weight array; export the model again")
            weights[info.filename[: -len(".npy")]] = _read_array(archive, info, path)
    return weights


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    where = f"{path}:{info.filename[:80]}"
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(handle)
            if dtype.kind not in "fiu" or math.prod(shape) * dtype.itemsize > info.file_size:
                raise ValueError(f"its header declares {dtype} {shape}, more than the archive holds or not numbers")
        with archive.open(info) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{where} is damaged ({error}); export the model again") from None


def _allowed_custom_calls() -> frozenset[str]:
    """JAX's custom-call targets guaranteed stable (vetted kernels, no Python callbacks), or what we emit."""
    try:
        from jax._src.export import _export

        return frozenset(_export._CUSTOM_CALL_TARGETS_GUARANTEED_STABLE)
    except (ImportError, AttributeError):
        return _EMITTED_CUSTOM_CALLS


def custom_call_targets(module_text: str) -> set[str]:
    """Every custom-call target a StableHLO module's text names (pretty and generic MLIR forms)."""
    pretty = re.findall(r"custom_call\s*@([^\s(]+)", module_text)
    generic = re.findall(r'call_target_name\s*=\s*"([^"]*)"', module_text)
    return set(pretty) | set(generic)


def _deserialize_stablehlo(data: bytes, path: Path):
    """The deserialized module, refused if it names a custom call outside the allowed set (never run)."""
    import jax  # only here: an ONNX deployment needs no JAX

    try:
        exported = jax.export.deserialize(bytearray(data))
        text = exported.mlir_module()
    except Exception as error:  # flatbuffers and MLIR raise assorted types for a damaged file
        raise UserError(f"{path} is not a readable StableHLO module ({type(error).__name__}); export the model "
                        "again") from None  # fmt: skip
    forbidden = sorted(custom_call_targets(text) - _allowed_custom_calls())
    if forbidden:
        raise UserError(f"{path} calls custom-call targets the exporter never emits ({', '.join(forbidden)[:200]}); "
                        "refusing to run it: use an ONNX export from a source you do not trust")  # fmt: skip
    platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    if exported.nr_devices != 1 or platform not in exported.platforms:
        raise UserError(f"{path} is lowered for {', '.join(exported.platforms)} on {exported.nr_devices} devices, "
                        f"not for one {platform} device; export it on this kind of machine")  # fmt: skip
    return exported


def _weights_by_position(exported, weights: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """``weights`` checked against the module's own argument names, shapes and dtypes, and to be finite."""
    import jax

    try:
        (named, _, _), _ = jax.tree_util.tree_unflatten(exported.in_tree, range(len(exported.in_avals)))
        expected = {name: exported.in_avals[index] for name, index in named.items()}
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"{path} does not take (weights by name, tokens, lengths); export the model again") from None
    if set(expected) != set(weights):
        extra, missing = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
        raise UserError(f"{path.parent / 'weights.npz'} does not fit the StableHLO model's inputs (extra "
                        f"{extra[:3]}, missing {missing[:3]}); export the model again")  # fmt: skip
    for name, aval in expected.items():
        if (weights[name].shape, weights[name].dtype) != (tuple(aval.shape), aval.dtype):
            raise UserError(f"{path.parent / 'weights.npz'}: {name} is {weights[name].dtype}{list(weights[name].shape)}"
                            f", the StableHLO model takes {aval.dtype}{list(aval.shape)}; export the model again")
        if not np.isfinite(weights[name]).all():
            raise UserError(f"{path.parent / 'weights.npz'}: {name} has non-finite values (the run diverged); "
                            "export another checkpoint")  # fmt: skip
    return weights


def stablehlo_runner(folder: Path, manifest: dict) -> Runner:
    """Runs the artifact on every local device, each on its share of the batch's rows (one device each share;
    a CPU started with one device per core, as ``predict.py`` does, runs one share per core)."""
    import jax

    path = folder / "model.stablehlo"
    exported = _deserialize_stablehlo(read_checked(folder, manifest, "model.stablehlo"), path)
    arrays = read_weights(read_checked(folder, manifest, "weights.npz"), folder / "weights.npz")
    if sorted(arrays) != sorted(manifest["weights"]):
        raise UserError(f"{folder / 'weights.npz'} holds other arrays than the manifest lists; export the model again")
    arrays = _weights_by_position(exported, arrays, path)
    devices = jax.local_devices()
    weights = [jax.device_put(arrays, device) for device in devices]
    call = jax.jit(exported.call)

    def run_share(index: int, tokens: np.ndarray, lengths: np.ndarray):
        return call(weights[index], *jax.device_put((tokens, lengths), devices[index]))  # dispatched asynchronously

    return Runner("stablehlo", lambda tokens, lengths: split_rows(run_share, tokens, lengths, len(devices)))


def _onnx_session(data: bytes, path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise UserError("reading an ONNX model needs onnxruntime: pip install 'lstm_jax[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable graphs
        raise UserError(f"{path} cannot be loaded ({str(error).splitlines()[0][:200]}); export the model again"
                        ) from None  # fmt: skip
    inputs = sorted((node.name, node.type, len(node.shape or ())) for node in session.get_inputs())
    outputs = [(node.type, len(node.shape or ())) for node in session.get_outputs()]
    if inputs != [("lengths", "tensor(int32)", 1), ("tokens", "tensor(int32)", 2)] or outputs[:1] != [
            ("tensor(float)", 1)]:  # fmt: skip
        raise UserError(f"{path} takes {inputs} and gives {outputs}, not tokens <int32>[b, t], lengths <int32>[b] -> "
                        "<float32>[b]; export the model again")  # fmt: skip
    return session


def _check_embedding_rows(session, vocab_size: int, path: Path) -> None:
    """The graph's embedding table has one row per vocabulary id (the last id reads, the next one is out of range)
    and gives finite probabilities (a NaN weight would label every statement negative)."""
    lengths = np.ones(1, np.int32)
    try:
        probability = session.run(None, {"tokens": np.full((1, 1), vocab_size - 1, np.int32), "lengths": lengths})[0]
    except Exception as error:  # onnxruntime's own exception types
        raise UserError(f"{path} fails on the vocabulary's last id ({str(error).splitlines()[0][:160]}): it was "
                        "exported with another vocabulary; export the model again") from None  # fmt: skip
    if not np.isfinite(probability).all():
        raise UserError(f"{path} gives non-finite probabilities (non-finite weights); export another checkpoint")
    import onnxruntime

    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4  # the out-of-range error below is the expected outcome: not logged
    try:
        session.run(None, {"tokens": np.full((1, 1), vocab_size, np.int32), "lengths": lengths}, quiet)
    except Exception:  # out of range, as it must be
        return
    raise UserError(f"{path} has more embedding rows than the vocabulary's {vocab_size} ids: it was exported with "
                    "another vocabulary; export the model again")  # fmt: skip


def onnx_runner(folder: Path, manifest: dict) -> Runner:
    """Runs each batch's rows in one share per core, each share on one thread of ONNX Runtime.

    Measured on 2 cores (batch 256): 1.7x the statements/s of one call with 2 intra-op threads for the default
    bidirectional GRU, 1.2x for an LSTM of 128: the recurrent operators parallelise poorly inside one call.
    """
    path = folder / "model.onnx"
    session = _onnx_session(read_checked(folder, manifest, "model.onnx"), path)
    _check_embedding_rows(session, manifest["model"]["vocab_size"], path)
    workers = os.cpu_count() or 1
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None  # ONNX Runtime releases the GIL

    def run_share(index: int, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(None, {"tokens": tokens, "lengths": lengths})[0]

    return Runner("onnx", lambda tokens, lengths: split_rows(run_share, tokens, lengths, workers, pool))


RUNNERS = {"stablehlo": stablehlo_runner, "onnx": onnx_runner}


def _available(model_format: str) -> bool:
    module = "onnxruntime" if model_format == "onnx" else "jax"
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def choose_format(folder: Path, manifest: dict, model_format: str | None) -> str:
    """``model_format``, which the folder must hold; default the fastest one this machine can run."""
    formats = manifest["formats"]
    if model_format is None:
        runnable = [name for name in FASTEST_FIRST if name in formats and _available(name)]
        return runnable[0] if runnable else formats[0]
    if model_format not in formats:
        raise UserError(f"{folder} holds {', '.join(formats)}, not {model_format}; export with --format {model_format}")
    return model_format
