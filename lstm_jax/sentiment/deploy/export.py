"""Export a trained checkpoint as a self-contained folder (library; the command line is ../../export.py).

``export_model(workdir, output, formats)`` restores the model as ``predict.py`` does and writes the folder that
:mod:`.deploy` reads (its docstring lists the files): the StableHLO of the inference function (``jax.export``,
symbolic batch and time, lowered for ``cpu`` and ``cuda``) and its weights, and/or an ONNX graph
(:mod:`.onnx_graph`). The folder is written beside ``output`` under a temporary name and renamed into place when
complete; an existing non-empty ``output`` is replaced only with ``force``.
"""

from __future__ import annotations

import json
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
from lstm_jax.sentiment.errors import UserError, raise_if_interrupted
from lstm_jax.sentiment.model.classifier import build_model

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")


def _portable(restored: RestoredModel) -> nnx.Module:
    """The restored model with a recurrence that lowers on every platform of :data:`PLATFORMS`.

    ``auto`` on a CPU gives ``fused``/``scan``/``chunkwise`` (plain JAX, lowered for both platforms); on a GPU it
    would pick cuDNN, a CUDA-only custom call that cannot be lowered for the CPU, so there the model is rebuilt
    with ``scan``, which computes the same function.
    """
    rnns = [node for _, node in nnx.iter_graph(restored.model) if isinstance(node, recurrent.RNN)]
    if all(rnn.backend != "cudnn" for rnn in rnns):
        return restored.model
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model({**restored.model_kwargs, "backend": "scan"},
                                                               nnx.Rngs(0))))  # fmt: skip
    return nnx.merge(graphdef, nnx.state(restored.model))


def named_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every weight of ``model`` under its name (``encoder/layers/0/cell/input_kernel``...), as NumPy arrays."""
    return {name: np.asarray(leaf) for name, leaf in ckpt.named_leaves(nnx.state(model)).items()}


def export_stablehlo(model: nnx.Module, folder: Path) -> list[str]:
    """Writes ``model.stablehlo`` and ``weights.npz``; returns the weight names. The module takes the weights as
    a table by name, so the loader matches each array to its argument by name, shape and dtype."""
    graphdef, state = nnx.split(model)
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


def _summary(restored: RestoredModel) -> dict:
    kwargs = {key: value for key, value in restored.model_kwargs.items() if key != "backend"}
    config = restored.meta.get("config", {})
    return {
        **kwargs,
        "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(nnx.state(restored.model)))),
        "step": restored.step,
        "dataset": config.get("dataset"),
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
    model = _portable(restored)
    manifest = {"format_version": deploy.FORMAT_VERSION, "formats": formats, **describe(restored, threshold),
                "platforms": {"stablehlo": list(PLATFORMS), "onnx": ["any onnxruntime"]}}
    (folder / "vocabulary.json").write_text(json.dumps(restored.vocabulary.to_json(), ensure_ascii=False))
    if "stablehlo" in formats:
        manifest["weights"] = export_stablehlo(model, folder)
    raise_if_interrupted()
    if "onnx" in formats:
        from lstm_jax.sentiment.deploy import onnx_graph  # needs the [onnx] extra

        onnx_graph.write(restored.model_kwargs, named_weights(model), folder / "model.onnx")
    manifest["sha256"] = {path.name: deploy.sha256(path) for path in sorted(folder.iterdir())}
    manifest["settings_sha256"] = deploy.settings_digest(manifest)
    (folder / deploy.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export_model(workdir: str | Path, output: str | Path, formats: list[str], step: int | None = None,
                 force: bool = False, threshold: float = 0.5) -> Path:  # fmt: skip
    """Writes the exported folder ``output``; returns its path. Nothing is left behind on failure."""
    output = Path(output)
    if not formats or any(name not in FORMATS for name in formats):
        raise UserError(f"--format must be one or more of {', '.join(FORMATS)} (comma-separated), got {formats}")
    check_prediction_setting("threshold", threshold)
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} is a file; give a folder name")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"output {output} exists and is not empty; give a new folder or --force to replace it")
    restored = restore_model(workdir, step)
    if "onnx" in formats:
        from lstm_jax.sentiment.deploy import onnx_graph  # needs the [onnx] extra

        onnx_graph.check_exportable(restored.model_kwargs)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        _write_folder(restored, staging, list(formats), threshold)
        staging.chmod(0o777 & ~files.umask())  # mkdtemp made it private; the folder is meant to be shared
        if output.exists():  # --force: the old folder goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            output.rename(old / "previous")
            staging.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output

