"""Exported models (export.py, lstm_jax.deploy, predict.py --model) against the model they came from."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config
from flax import nnx

import lstm_jax.deploy as deploy
from lstm_jax import native
from lstm_jax.recurrent import RNN
from lstm_jax.sentiment.data.subwords import subword_ids
from lstm_jax.sentiment.deploy import artifacts, onnx_graph
from lstm_jax.sentiment.deploy.export import MODEL_SETTINGS, export_stablehlo, named_weights
from lstm_jax.sentiment.deploy.predict import load_predictor
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.classifier import DataSizes, build_model

onnxruntime = pytest.importorskip("onnxruntime")

VOCAB = 40
LENGTHS = np.array([0, 1, 7, 9, 4], np.int32)  # 0, 1, 7 and the whole padded width


def _batch():
    tokens = np.random.default_rng(0).integers(1, VOCAB, (len(LENGTHS), 9)).astype(np.int32)
    tokens[np.arange(9)[None] >= LENGTHS[:, None]] = 0
    return tokens, LENGTHS


def _model(**overrides):
    """A tiny classifier with every float weight (peepholes, biases, head, fixed tables) moved away from its
    initial value; returns (the settings the ONNX graph reads, the model)."""
    config = load_config(embedding_dim=6, hidden_size=4, **overrides)
    graphdef, state = nnx.split(build_model(config, DataSizes(VOCAB), nnx.Rngs(1)))
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(state))))
    def moved(leaf):  # the integer tables keep their ids
        return leaf + 0.3 * jax.random.normal(next(keys), leaf.shape) if leaf.dtype == np.float32 else leaf

    model = nnx.merge(graphdef, jax.tree.map(moved, state))
    if config.subword_buckets:
        # Words that share many n-grams ("<wo", "wor", ...), so buckets collect several words' gradients.
        words = [f"word{index}" for index in range(VOCAB - 2)]
        model.embedder.subword_ids[...] = subword_ids(words, config.subword_buckets)
    return {**{key: config[key] for key in MODEL_SETTINGS}, "vocab_size": VOCAB}, model


def _reference(model, tokens, lengths):
    return np.asarray(jax.nn.sigmoid(model(tokens, lengths)))


# Every (cell, pooling), (cell, direction) and (direction, pooling) pair once (the graph builds each part
# independently of the others), then the optional paths.
_BIDIRECTIONAL = {"last": (False, True, False, True), "max": (True, False, True, False),
                  "mean_max": (False, True, True, False)}  # per pooling, for the cells in this order  # fmt: skip
ONNX_GRID = [
    dict(cell=cell, bidirectional=_BIDIRECTIONAL[pooling][index], pooling=pooling)
    for pooling in ("last", "max", "mean_max")
    for index, cell in enumerate(("lstm", "peephole_lstm", "gru", "simple_rnn"))
] + [

    dict(cell="lstm", bidirectional=True, num_layers=2, pooling="last"),
    dict(cell="gru", num_layers=2, pooling="max"),
    # configs/glove.py's model (its recurrent dropout is training-only); 64 and 32 buckets: hash collisions
    dict(cell="gru", bidirectional=True, pooling="mean_max", ngram_buckets=64, ngram_order=3,
         recurrent_dropout_rate=0.25, static_embeddings=True, subword_buckets=32),
    dict(cell="lstm", pooling="mean_max", ngram_buckets=1 << 20),
    # the two extra embedding inputs alone and together (folded into the gathered table)
    dict(cell="gru", bidirectional=True, pooling="mean_max", static_embeddings=True),
    dict(cell="lstm", pooling="last", subword_buckets=32),
    dict(cell="lstm", pooling="max", static_embeddings=True, subword_buckets=32),
]


@pytest.mark.parametrize("settings", ONNX_GRID, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_onnx_graph_equals_the_model(settings):
    kwargs, model = _model(**settings)
    tokens, lengths = _batch()
    session = onnxruntime.InferenceSession(onnx_graph.build(kwargs, named_weights(model)).SerializeToString(),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    onnx_probabilities = session.run(None, {"tokens": tokens, "lengths": lengths})[0]
    np.testing.assert_allclose(onnx_probabilities, _reference(model, tokens, lengths), atol=1e-5)
    # One row alone gives what it gives in the batch (exact lengths: padding and neighbours change nothing).
    alone = session.run(None, {"tokens": tokens[2:3, :7], "lengths": lengths[2:3]})[0]
    np.testing.assert_allclose(alone, onnx_probabilities[2:3], atol=1e-6)


def test_onnx_emits_the_native_recurrent_operators():
    kwargs, model = _model(cell="gru", bidirectional=True)
    graph = onnx_graph.build(kwargs, named_weights(model)).graph
    (gru,) = [node for node in graph.node if node.op_type == "GRU"]
    attributes = {a.name: a for a in gru.attribute}
    assert attributes["linear_before_reset"].i == 1 and attributes["direction"].s == b"bidirectional"
    assert gru.input[4], "sequence_lens must be wired"
    assert not [node for node in graph.node if node.op_type in ("Loop", "Scan")]


@pytest.mark.parametrize("settings", [
    dict(cell="layernorm_lstm"), dict(cell="slstm", num_heads=2), dict(cell="mlstm", num_heads=2),
    dict(cell="lstm", dtype="bfloat16"),
])  # fmt: skip
def test_onnx_refuses_what_its_operators_cannot_express(settings):
    with pytest.raises(UserError, match="cannot be exported to ONNX: .*use --format stablehlo"):
        onnx_graph.check_exportable({"cell": "lstm", **settings})


STABLEHLO_GRID = [
    dict(cell="lstm", bidirectional=True, pooling="mean_max"),
    dict(cell="gru", pooling="max", num_layers=2, static_embeddings=True, subword_buckets=32),
    dict(cell="layernorm_lstm", bidirectional=True, pooling="last"),
    dict(cell="lstm", ngram_buckets=64, ngram_order=3),
    dict(cell="slstm", num_heads=2, bidirectional=True),
    dict(cell="mlstm", num_heads=2, pooling="mean_max"),
]


@pytest.mark.parametrize("settings", STABLEHLO_GRID, ids=lambda s: s["cell"])
def test_stablehlo_artifact_equals_the_model_for_any_batch_and_time(settings, tmp_path):
    kwargs, model = _model(**settings)
    names = export_stablehlo(model, tmp_path)
    digests = {name: artifacts.sha256(tmp_path / name) for name in ("model.stablehlo", "weights.npz")}
    run = artifacts.stablehlo_runner(tmp_path, {"weights": names, "sha256": digests}).run_batch
    tokens, lengths = _batch()
    np.testing.assert_allclose(run(tokens, lengths), _reference(model, tokens, lengths), atol=1e-5)
    # The same artifact at another batch size and padded length (symbolic dimensions).
    np.testing.assert_allclose(run(tokens[2:3, :7], lengths[2:3]), _reference(model, tokens, lengths)[2:3],
                               atol=1e-5)  # fmt: skip


def test_a_model_on_the_native_cpu_kernel_exports_its_scan_form_and_keeps_its_kernel(tmp_path):
    # Once the export traced the model as it ran, custom call of the native kernel and all, and jax.export refused it.
    _, model = _model(cell="gru", bidirectional=True)

    def backends():
        return {node.backend for _, node in nnx.iter_graph(model) if isinstance(node, RNN)}

    expected = {"native"} if native.unavailable_reason() is None else {"scan"}
    assert backends() == expected
    export_stablehlo(model, tmp_path)
    assert b"lstm_jax_" not in (tmp_path / "model.stablehlo").read_bytes()
    assert backends() == expected  # the model itself still runs its kernel


# ------------------------------------------------------------------------------------------ the whole job


STATEMENTS = ["...", "great", "the plot was charming and delightful fun",
              " ".join(["awful boring dull terrible mess tedious bland painful great"] * 4)]  # fmt: skip


def run_tool(*args, env=None):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "model"
    result = run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(folder),
                      "--format", "stablehlo,onnx")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return folder


def test_exported_folder_predicts_what_the_checkpoint_predicts(trained_workdir, exported):
    texts = (STATEMENTS * 80)[:300]
    for batch_size in (1, 3, 300):
        expected = load_predictor(trained_workdir, batch_size=batch_size).predict(texts)
        for model_format in ("stablehlo", "onnx"):
            model = deploy.load(exported, model_format, batch_size=batch_size)
            np.testing.assert_allclose(model.predict(texts), expected, atol=1e-5, err_msg=f"{model_format}")
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format_version"] == deploy.FORMAT_VERSION and manifest["threshold"] == 0.5
    assert set(manifest["sha256"]) == {"model.onnx", "model.stablehlo", "weights.npz", "vocabulary.json"}
    assert manifest["model"]["cell"] == "lstm" and manifest["tokenizer"]["max_len"] == 12


def test_predict_with_an_exported_model_writes_the_same_file(trained_workdir, exported, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(STATEMENTS + ["", "great wonderful superb"]) + "\n")
    outputs = []
    for args in (["--workdir", str(trained_workdir)], ["--model", str(exported)]):
        output = tmp_path / f"out{len(outputs)}.jsonl"
        result = run_tool("predict.py", *args, "--input", str(source), "--output", str(output), "--format", "jsonl")
        assert result.returncode == 0, result.stderr.decode()
        outputs.append(output.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 5


def test_deploy_loads_in_a_fresh_process_without_flax_or_orbax(exported):
    code = (
        "import sys, json, lstm_jax.deploy as d\n"
        f"p = d.load({str(exported)!r}, 'stablehlo').predict({STATEMENTS!r})\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('flax', 'orbax', 'optax')]\n"
        "model_code = [m for m in sys.modules if m in ('lstm_jax.sentiment.model.classifier', 'lstm_jax.cells')]\n"
        "print(json.dumps([p.tolist(), loaded, model_code]))\n"
    )
    result = run_tool("-c", code)
    assert result.returncode == 0, result.stderr.decode()
    probabilities, loaded, model_code = json.loads(result.stdout)
    assert loaded == [] and model_code == []
    np.testing.assert_allclose(probabilities, deploy.load(exported, "onnx").predict(STATEMENTS), atol=1e-5)


def _one_line_error(result, *fragments):
    stderr = result.stderr.decode().strip()
    assert result.returncode == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def test_damaged_or_unknown_exports_are_refused_in_one_line(exported, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great\n")
    output = tmp_path / "predictions.txt"

    def predict(folder):
        return run_tool("predict.py", "--model", str(folder), "--input", str(source), "--output", str(output))

    _one_line_error(predict(tmp_path / "missing"), "does not exist")
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    for name in ("model.onnx", "weights.npz"):  # predict.py runs ONNX; the library's stablehlo reads the weights
        damaged = bytearray((copy / name).read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        (copy / name).write_bytes(damaged)
    _one_line_error(predict(copy), "model.onnx is damaged")
    with pytest.raises(UserError, match="weights.npz is damaged"):
        deploy.load(copy, "stablehlo")
    manifest = json.loads((exported / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    _one_line_error(predict(copy), "format version 99")
    (copy / "manifest.json").write_text('{"format_vers')
    _one_line_error(predict(copy), "manifest.json is damaged")
    assert not output.exists()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda m: m.update(threshold="abc"), "threshold 'abc' is not a number from 0.0 to 1.0"),
        (lambda m: m.update(threshold=True), "threshold True"),
        (lambda m: m["tokenizer"].update(max_len=-5), "max_len -5 is not a whole number"),
        (lambda m: m["tokenizer"].update(length_bucket=10**12), "length_bucket 1000000000000"),
        (lambda m: m.pop("tokenizer"), "no tokenizer or model section"),
        (lambda m: m["tokenizer"].update(name="bpe"), "tokenizer 'bpe' is not one of lowercase-words-v1"),
        (lambda m: m["model"].update(vocab_size="z"), "vocab_size 'z'"),
        (lambda m: m.update(weights=m["weights"][:-1]), "holds other arrays than the manifest lists"),
        (lambda m: m.update(formats=5), "formats 5 is not a list"),
        (lambda m: m.update(sha256=["a"]), "sha256 ['a'] is not a table"),
        (lambda m: m["sha256"].pop("vocabulary.json"), "no digest for vocabulary.json"),
        (lambda m: m["sha256"].update({"../../outside.txt": "0" * 64}), "lists '../../outside.txt', not a file"),
    ],
)  # fmt: skip
def test_a_hand_edited_manifest_is_refused_in_one_line(exported, tmp_path, edit, fragment):
    """An edit is refused by the settings digest; one with the digest recomputed, by the rule it breaks."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in exported.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((exported / "manifest.json").read_text())
    edit(manifest)
    script = tmp_path / "load.py"  # as a user's program would, with the one-line errors of our entry points
    script.write_text("import sys\nimport lstm_jax.deploy\nfrom lstm_jax.sentiment.errors import exit_on_user_error\n"
                      "load = lambda: lstm_jax.deploy.load(sys.argv[1], sys.argv[2]).predict(['great'])\n"
                      "exit_on_user_error(load)()\n")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    unsealed = run_tool(str(script), str(copy), "onnx")
    _one_line_error(unsealed)  # the structure's rules come first, then the settings digest
    assert any(text in unsealed.stderr.decode() for text in (fragment, "settings differ from what the exporter wrote"))
    manifest["settings_sha256"] = artifacts.settings_digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for model_format in ("onnx", "stablehlo"):
        result = run_tool(str(script), str(copy), model_format)
        if "manifest lists" in fragment and model_format == "onnx":
            assert result.returncode == 0, result.stderr.decode()  # the ONNX graph does not use the weights list
        else:
            _one_line_error(result, fragment)


def test_export_refuses_bad_requests_and_writes_nothing(trained_workdir, exported, tmp_path):
    before = {file.name: file.read_bytes() for file in exported.iterdir()}
    _one_line_error(run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(exported)),
                    "exists and is not empty", "--force")  # fmt: skip
    assert {file.name: file.read_bytes() for file in exported.iterdir()} == before
    _one_line_error(run_tool("export.py", "--workdir", str(tmp_path / "nothing"), "--output", str(tmp_path / "a")),
                    "does not exist")  # fmt: skip
    _one_line_error(run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(tmp_path / "b"),
                             "--format", "tflite"), "--format must be")  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_export_force_replaces_an_earlier_export_only_when_the_new_one_is_complete(trained_workdir, tmp_path):
    folder = tmp_path / "model"
    assert run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(folder)).returncode == 0
    result = run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(folder), "--format", "onnx",
                      "--force", "--threshold", "0.7")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(path.name for path in folder.iterdir()) == ["manifest.json", "model.onnx", "vocabulary.json"]
    assert deploy.load(folder).threshold == 0.7
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # no staging folder left


def test_load_refuses_a_format_the_folder_does_not_hold(tmp_path, trained_workdir):
    folder = tmp_path / "model"
    assert run_tool("export.py", "--workdir", str(trained_workdir), "--output", str(folder)).returncode == 0
    with pytest.raises(UserError, match="holds stablehlo, not onnx"):
        deploy.load(folder, "onnx")
