"""An exported folder is untrusted input (issue 40 items 4, 5, 6, 10, 11, 12): each crafted folder is refused in one
line before anything in it runs, and a folder resealed with other digests cannot make the model predict wrongly."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from conftest import ROOT

import lstm_jax.deploy
from lstm_jax.sentiment.deploy import artifacts
from lstm_jax.sentiment.errors import UserError

pytest.importorskip("onnxruntime")
STATEMENTS = ["great wonderful film", "awful boring mess", "the plot"]


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    from lstm_jax.sentiment.deploy.export import export_model

    return export_model(trained_workdir, tmp_path_factory.mktemp("export") / "model", ["stablehlo", "onnx"])


def _copy(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    return folder


def _reseal(folder, **manifest_changes):
    """Recomputes every digest, as whoever ships a crafted folder would."""
    manifest = {**json.loads((folder / "manifest.json").read_text()), **manifest_changes}
    manifest["sha256"] = {name: artifacts.sha256(folder / name) for name in manifest["sha256"]}
    manifest["settings_sha256"] = artifacts.settings_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _refused(folder, model_format, fragment):
    with pytest.raises(UserError, match=fragment) as refusal:
        lstm_jax.deploy.load(folder, model_format).predict(STATEMENTS)
    assert "\n" not in str(refusal.value)


def _run(*args):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, timeout=300)


# ------------------------------------------------------------------------------------------ item 4: code


def test_our_stablehlo_calls_only_custom_calls_jax_guarantees_stable(exported):
    exported_module = jax.export.deserialize(bytearray((exported / "model.stablehlo").read_bytes()))
    assert artifacts.custom_call_targets(exported_module.mlir_module()) <= artifacts._allowed_custom_calls()


def test_a_stablehlo_module_with_a_python_callback_is_refused_without_running(exported, tmp_path):
    """The issue's crash: the Python callback target with an index into an empty table segfaults when run."""
    target = "xla_ffi_python_cpu_callback"

    def crafted(tokens):
        return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tokens.shape, tokens.dtype))(tokens, index=np.uint64(7))

    module = jax.export.export(jax.jit(crafted), platforms=["cpu"],
                               disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(target)])(
        jax.ShapeDtypeStruct((2,), np.float32))  # fmt: skip
    folder = _copy(exported, tmp_path)
    (folder / "model.stablehlo").write_bytes(module.serialize())
    _reseal(folder)
    _refused(folder, "stablehlo", f"calls custom-call targets the exporter never emits \\({target}\\)")


# ------------------------------------------------------------------------------------------ item 5: the files


@pytest.mark.parametrize("name", ["manifest.json", "vocabulary.json", "model.onnx"])
def test_links_and_devices_are_refused_without_reading_them(exported, tmp_path, name):
    folder = _copy(exported, tmp_path)
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")
    _refused(folder, "onnx", "is a symbolic link")
    (folder / name).unlink()
    os.mkfifo(folder / name)  # opened for reading, a FIFO with no writer would block forever
    _refused(folder, "onnx", "is not a regular file")
    (folder / name).unlink()
    (folder / name).mkdir()
    _refused(folder, "onnx", "is not a regular file")


def test_a_file_over_its_size_cap_is_refused(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(artifacts.SIZE_CAPS, "vocabulary.json", 10)
    _refused(exported, "onnx", "vocabulary.json is over the 10 bytes a vocabulary.json may have")


def test_a_path_outside_the_folder_in_the_manifest_is_refused(exported, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    folder = _copy(exported, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("../outside.txt", str(outside), "/etc/hostname", "manifest.json"):
        changed = {**manifest, "sha256": {**manifest["sha256"], name: artifacts.sha256(outside)}}
        changed["settings_sha256"] = artifacts.settings_digest(changed)
        (folder / "manifest.json").write_text(json.dumps(changed))
        _refused(folder, "onnx", "not a file an export holds")


# ------------------------------------------------------------------------------------------ item 6: integrity


def test_a_missing_digest_is_a_refusal_and_settings_are_covered(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    words = json.loads((folder / "vocabulary.json").read_text())
    (folder / "vocabulary.json").write_text(json.dumps(words[::-1]))  # labels would flip
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["sha256"]["vocabulary.json"]
    manifest["settings_sha256"] = artifacts.settings_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _refused(folder, "onnx", "no digest for vocabulary.json")
    shutil.copy(exported / "vocabulary.json", folder / "vocabulary.json")
    manifest = json.loads((exported / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "threshold": 0.99}))
    _refused(folder, "onnx", "settings differ from what the exporter wrote")


def test_a_vocabulary_that_lists_a_word_twice_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    words = json.loads((folder / "vocabulary.json").read_text())
    (folder / "vocabulary.json").write_text(json.dumps([words[1], *words[1:]]))
    _reseal(folder)
    _refused(folder, "onnx", "lists a word twice")


def test_swapped_stablehlo_weight_names_cannot_swap_the_weights(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    expected = lstm_jax.deploy.load(exported, "stablehlo").predict(STATEMENTS)
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "weights.npz") as archive:
        shapes = {name: archive[name].shape for name in manifest["weights"]}
    first, second = next((a, b) for a in shapes for b in shapes if a < b and shapes[a] == shapes[b])
    order = manifest["weights"]
    i, j = order.index(first), order.index(second)
    order[i], order[j] = order[j], order[i]
    _reseal(folder, weights=order)
    np.testing.assert_array_equal(lstm_jax.deploy.load(folder, "stablehlo").predict(STATEMENTS), expected)


def test_a_weight_of_another_shape_or_non_finite_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    with np.load(folder / "weights.npz") as archive:
        weights = dict(archive)
    name = next(iter(weights))
    np.savez(folder / "weights.npz", **{**weights, name: np.zeros((3, 3), np.float32)})
    _reseal(folder)
    _refused(folder, "stablehlo", f"{name} is float32\\[3, 3\\], the StableHLO model takes")
    np.savez(folder / "weights.npz", **{**weights, name: np.full_like(weights[name], np.nan)})
    _reseal(folder)
    _refused(folder, "stablehlo", f"{name} has non-finite values")


def test_an_onnx_graph_of_another_vocabulary_or_with_nan_weights_is_refused(exported, trained_workdir, tmp_path):
    from lstm_jax.sentiment.deploy import onnx_graph
    from lstm_jax.sentiment.deploy.export import model_settings, named_weights
    from lstm_jax.sentiment.deploy.predict import restore_model

    folder = _copy(exported, tmp_path)
    words = json.loads((folder / "vocabulary.json").read_text())
    (folder / "vocabulary.json").write_text(json.dumps([*words, "extraword"]))
    manifest = json.loads((folder / "manifest.json").read_text())
    _reseal(folder, model={**manifest["model"], "vocab_size": manifest["model"]["vocab_size"] + 1})
    _refused(folder, "onnx", "fails on the vocabulary's last id .* another vocabulary")
    (folder / "vocabulary.json").write_text(json.dumps(words[:-1]))
    _reseal(folder, model={**manifest["model"], "vocab_size": manifest["model"]["vocab_size"] - 1})
    _refused(folder, "onnx", "more embedding rows than the vocabulary's")
    restored = restore_model(trained_workdir)
    weights = named_weights(restored.model)
    head = next(name for name in weights if "head" in name)
    onnx_graph.write(model_settings(restored), {**weights, head: np.full_like(weights[head], np.nan)},
                     folder / "model.onnx")  # fmt: skip
    shutil.copy(exported / "vocabulary.json", folder / "vocabulary.json")
    _reseal(folder, model=manifest["model"])
    _refused(folder, "onnx", "non-finite probabilities")


# ------------------------------------------------------------------------------------------ items 10-12


def test_an_onnx_graph_with_other_inputs_is_refused_at_load(exported, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])  # fmt: skip
    folder = _copy(exported, tmp_path)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    _reseal(folder)
    _refused(folder, "onnx", "takes .*'x'.* not tokens <int32>")


def test_malformed_files_are_one_line_each(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    with np.load(folder / "weights.npz") as archive:
        weights = dict(archive)
    np.save(folder / "plain.npy", next(iter(weights.values())))
    (folder / "plain.npy").rename(folder / "weights.npz")
    _reseal(folder)
    _refused(folder, "stablehlo", "is not a .npz archive")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (200_000_000_000,)})
    with zipfile.ZipFile(folder / "weights.npz", "w") as archive:  # 745 GiB declared, 128 bytes present
        archive.writestr(f"{next(iter(weights))}.npy", header.getvalue() + bytes(128))
    _reseal(folder)
    _refused(folder, "stablehlo", "header declares float32 \\(200000000000,\\)")
    shutil.copy(exported / "weights.npz", folder / "weights.npz")
    (folder / "model.stablehlo").write_bytes((exported / "model.stablehlo").read_bytes()[:500])
    _reseal(folder)
    _refused(folder, "stablehlo", "is not a readable StableHLO module")


def test_a_version_1_export_is_told_to_export_again(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    _reseal(folder, format_version=1)
    _refused(folder, "onnx", "exported by an earlier lstm_jax \\(format version 1.*export it again")


def test_predict_py_on_a_zip_or_a_broken_graph_is_one_line(exported, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great\n")
    archive = shutil.make_archive(str(tmp_path / "model"), "zip", exported)
    folder = _copy(exported, tmp_path)
    (folder / "model.onnx").write_bytes(b"not a graph")
    _reseal(folder)
    for model, fragment in ((archive, "is a zip archive, not a folder: unpack it"), (folder, "cannot be loaded")):
        result = _run("predict.py", "--model", str(model), "--input", str(source), "--output", str(tmp_path / "o"))
        stderr = result.stderr.decode().strip()
        assert result.returncode == 2 and len(stderr.splitlines()) == 1 and fragment in stderr, stderr
    assert not (tmp_path / "o").exists()


def test_predict_takes_a_list_not_one_string(exported):
    model = lstm_jax.deploy.load(exported, "onnx")
    with pytest.raises(TypeError, match="not one string: write predict\\(\\[text\\]\\)"):
        model.predict("great film")
    with pytest.raises(TypeError, match="statement 1 is int"):
        model.predict(["great", 5])
    assert model.predict(("great film",)).shape == (1,)


def test_no_statements_give_no_predictions_for_every_runner(exported, trained_workdir):
    from lstm_jax.sentiment.deploy.predictor import load

    for predictor in (load(workdir=trained_workdir), load(model=exported)):  # the checkpoint's divided by zero
        assert predictor.predict([]).shape == (0,)


def test_a_failed_warm_up_stops_the_server_with_one_line_and_exit_2(exported, tmp_path):
    script = tmp_path / "serve_failing.py"  # serve.py's path with a model call that fails at warm-up
    script.write_text(
        "import sys\nfrom lstm_jax.sentiment.errors import exit_on_user_error\n"
        "from lstm_jax.sentiment.serve import app\n"
        "service = app.load_service(model=sys.argv[1])\n"
        "def fail(progress):\n    progress(1)\n    raise RuntimeError('the graph cannot run this shape')\n"
        "service.scorer.warm_up = fail\n"
        "exit_on_user_error(app.serve)(service, '127.0.0.1', 0)\n"
    )
    result = _run(str(script), str(exported))
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, lines
    assert lines[-1] == ("error: warm-up failed (RuntimeError: the graph cannot run this shape); the model cannot "
                         "serve: export it again"), lines  # fmt: skip
    assert not any("Traceback" in line for line in lines), lines


def test_predict_py_never_writes_inside_the_model_it_reads(exported, trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great\n")
    manifest = (exported / "manifest.json").read_bytes()
    for flag, folder, output in (("--model", exported, exported / "manifest.json"),
                                 ("--workdir", trained_workdir, trained_workdir / "best" / "predictions.txt"),
                                 ("--workdir", trained_workdir, trained_workdir / "metrics.jsonl")):  # fmt: skip
        result = _run("predict.py", flag, str(folder), "--input", str(source), "--output", str(output))
        stderr = result.stderr.decode().strip()
        assert result.returncode == 2 and len(stderr.splitlines()) == 1 and "lies inside" in stderr, stderr
    assert (exported / "manifest.json").read_bytes() == manifest
    assert not (trained_workdir / "best" / "predictions.txt").exists()
