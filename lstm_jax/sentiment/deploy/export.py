"""Export a trained checkpoint as a self-contained folder (library; the command line is ../../export.py).

``export_model(workdir, output, formats)`` restores the model as ``predict.py`` does and writes the folder that
:mod:`.artifacts` reads (its docstring lists the files): the StableHLO of the inference function (``jax.export``,
symbolic batch and time, lowered for ``cpu`` and ``cuda``) and its weights, and/or an ONNX graph
(:mod:`.onnx_graph`). The folder is written beside ``output`` under a temporary name and renamed into place when
complete; ``force`` replaces only an earlier export (:func:`.files.publish_folder`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lstm_jax
from lstm_jax import recurrent
from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment import files
from lstm_jax.sentiment.config import check_prediction_setting
from lstm_jax.sentiment.deploy import artifacts as deploy
from lstm_jax.sentiment.deploy.predict import RestoredModel, restore_model
from lstm_jax.sentiment.errors import UserError, raise_if_interrupted, signals_deferred

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")
NEEDS = {"stablehlo": "flatbuffers", "onnx": "onnx"}  # what each format's writer imports beyond the job's install


def check_installed(formats: list[str]) -> None:
    """A one-line error naming the extra to install when a format's writer is missing."""
    for name in formats:
        try:
            importlib.import_module(NEEDS[name])
        except ImportError:
            raise UserError(f"exporting {name} needs the {NEEDS[name]} package: pip install 'lstm_jax[export]'"
                            ) from None  # fmt: skip


CUSTOM_CALL_BACKENDS = ("cudnn", "native")  # kernels reached through custom calls that an export cannot carry


def _portable(model: nnx.Module) -> nnx.Module:
    """``model`` with a recurrence that lowers on every platform of :data:`PLATFORMS`.

    ``fused``, ``scan`` and ``chunkwise`` are plain JAX and lower for both platforms; ``auto`` may pick cuDNN on a
    GPU (a CUDA-only custom call) or the native CPU kernel (a custom call of this library, absent where the
    export is loaded), so a copy whose layers run ``scan``, which computes the same function, is exported instead.
    """
    if all(rnn.backend not in CUSTOM_CALL_BACKENDS for rnn in _rnns(model)):
        return model
    model = nnx.clone(model)
    for rnn in _rnns(model):
        if rnn.backend in CUSTOM_CALL_BACKENDS:
            rnn.requested_backend = "scan"
    return model


def _rnns(model: nnx.Module) -> list[recurrent.RNN]:
    return [node for _, node in nnx.iter_graph(model) if isinstance(node, recurrent.RNN)]


def named_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every weight of ``model`` under its name (``encoder/layers/0/cell/input_kernel``...), as NumPy arrays."""
    return {name: np.asarray(leaf) for name, leaf in ckpt.named_leaves(nnx.state(model)).items()}


def export_stablehlo(model: nnx.Module, folder: Path) -> list[str]:
    """Writes ``model.stablehlo`` and ``weights.npz``; returns the weight names. The module takes the weights as
    a table by name, so the loader matches each array to its argument by name, shape and dtype."""
    graphdef, state = nnx.split(_portable(model))
    leaves, treedef = jax.tree.flatten(state)
    names = list(ckpt.named_leaves(state))  # the same order as the leaves

    def probabilities(weights, tokens, lengths):
        classifier = nnx.merge(graphdef, jax.tree.unflatten(treedef, [weights[name] for name in names]))
        return jax.nn.sigmoid(classifier(tokens, lengths))

    batch, time = jax.export.symbolic_shape("batch, time")
    arguments = (
        {name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for name, leaf in zip(names, leaves)},
        jax.ShapeDtypeStruct((batch, time), jnp.int32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
    try:
        exported = jax.export.export(jax.jit(probabilities), platforms=PLATFORMS)(*arguments)
    except Exception as error:  # a cell whose code does not lower with symbolic shapes: name it, do not crash
        raise UserError(f"this model cannot be exported to StableHLO ({type(error).__name__}: "
                        f"{str(error).splitlines()[0]})") from None  # fmt: skip
    (folder / "model.stablehlo").write_bytes(exported.serialize())
    np.savez(folder / "weights.npz", **dict(zip(names, (np.asarray(leaf) for leaf in leaves))))
    return names


# The settings that say what the model computes: an exported manifest's "model" section and the ONNX graph's plan.
MODEL_SETTINGS = ("embedding_dim", "hidden_size", "cell", "num_heads", "num_layers", "bidirectional", "pooling",
                  "static_embeddings", "subword_buckets", "ngram_buckets", "ngram_order", "dtype")  # fmt: skip


def model_settings(restored: RestoredModel) -> dict:
    """What the model computes, from its config and data sizes (``vocab_size``, ``subword_rows``...)."""
    return {**{key: restored.config[key] for key in MODEL_SETTINGS}, **dataclasses.asdict(restored.sizes)}


def _summary(restored: RestoredModel) -> dict:
    return {
        **model_settings(restored),
        "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(nnx.state(restored.model)))),
        "step": restored.step,
        "dataset": restored.config.dataset,
    }


def describe(restored: RestoredModel, threshold: float) -> dict:
    """What a manifest says about a model, for a checkpoint too (the service's ``GET /model``)."""
    return {
        "model": _summary(restored),
        "tokenizer": {"max_len": restored.max_len, "length_bucket": restored.length_bucket,
                      "name": restored.vocabulary.rules, "pad_id": 0, "unknown_id": 1},  # fmt: skip
        "threshold": threshold,
        "inputs": {"tokens": ["int32", ["batch", "time"]], "lengths": ["int32", ["batch"]]},
        "outputs": {"probabilities": ["float32", ["batch"]]},
        "versions": {"lstm_jax": lstm_jax.__version__, "jax": jax.__version__},
    }


def _write_folder(restored: RestoredModel, folder: Path, formats: list[str], threshold: float) -> None:
    model = restored.model
    manifest = {"format_version": deploy.FORMAT_VERSION, "formats": formats, **describe(restored, threshold),
                "platforms": {"stablehlo": list(PLATFORMS), "onnx": ["any onnxruntime"]}}
    (folder / "vocabulary.json").write_text(json.dumps(restored.vocabulary.to_json(), ensure_ascii=False))
    if "stablehlo" in formats:
        manifest["weights"] = export_stablehlo(model, folder)
    raise_if_interrupted()
    if "onnx" in formats:
        from lstm_jax.sentiment.deploy import onnx_graph  # needs the [onnx] extra

        onnx_graph.write(model_settings(restored), named_weights(model), folder / "model.onnx")
    manifest["sha256"] = {path.name: deploy.sha256(path) for path in sorted(folder.iterdir())}
    manifest["settings_sha256"] = deploy.settings_digest(manifest)
    (folder / deploy.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def is_earlier_export(folder: Path) -> bool:
    """Whether ``folder`` is a real folder holding an export's files only (with its manifest), or nothing."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    names = {path.name for path in folder.iterdir()}
    return not names or (names <= deploy.SIZE_CAPS.keys() and _looks_like_a_manifest(folder))


def _looks_like_a_manifest(folder: Path) -> bool:
    """Whether ``folder``'s manifest is a regular file (read as the loader reads it) holding a JSON object with an
    export's format version and digests, of any format version."""
    try:
        manifest = json.loads(deploy.read_file(folder, deploy.MANIFEST))
    except (UserError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and {"format_version", "sha256"} <= manifest.keys()


def check_output(workdir: Path, output: Path, force: bool) -> None:
    """Refuses an output that would lose data: the work directory, a folder around it or inside it, a file,
    or a non-empty folder (with ``force``, one that is not an earlier export)."""
    relation = ("is" if files.is_within(output, workdir) and files.is_within(workdir, output) else
                "lies inside" if files.is_within(output, workdir) else
                "contains" if files.is_within(workdir, output) else None)  # fmt: skip
    if relation:
        raise UserError(f"output {output} {relation} the work directory {workdir}; choose a folder outside it")
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} is a file; give a folder name")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise UserError(f"output {output} exists and is not empty; give a new folder or --force to replace it")
        if not is_earlier_export(output):
            raise UserError(f"output {output} holds files that export.py did not write; --force replaces only an "
                            "earlier export: choose a new folder")  # fmt: skip


def export_model(workdir: str | Path, output: str | Path, formats: list[str], step: int | None = None,
                 force: bool = False, threshold: float = 0.5) -> Path:  # fmt: skip
    """Writes the exported folder ``output``; returns its path. Nothing is left behind on failure, and nothing is
    replaced but an earlier export (with ``force``): see :func:`.files.publish_folder`."""
    output = Path(os.path.realpath(output))
    formats = list(dict.fromkeys(formats))  # "stablehlo,stablehlo" is one format
    if not formats or any(name not in FORMATS for name in formats):
        raise UserError(f"--format must be one or more of {', '.join(FORMATS)} (comma-separated), got {formats}")
    check_prediction_setting("threshold", threshold)
    check_output(Path(os.path.realpath(workdir)), output, force)
    check_installed(formats)
    restored = restore_model(workdir, step)
    if "onnx" in formats:
        from lstm_jax.sentiment.deploy import onnx_graph  # needs the [onnx] extra

        onnx_graph.check_exportable(model_settings(restored))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = None
    try:
        with signals_deferred():  # the folder and its name come together: a signal cannot orphan it
            staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
        _write_folder(restored, staging, list(formats), threshold)
        staging.chmod(0o777 & ~files.umask())  # mkdtemp made it private; the folder is meant to be shared
        raise_if_interrupted()
        files.publish_folder(staging, output, replaceable=lambda old: is_earlier_export(old) and (
            force or not any(old.iterdir())))  # fmt: skip
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return output
