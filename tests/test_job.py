"""The sentiment job end to end: training, exact resume after SIGKILL / Ctrl-C, data parallelism, prediction
and every bad input of the command-line tools."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config
from flax import nnx

from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.deploy.predict import load_predictor, predict_file
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.train.trainer import NonFiniteLoss, train_and_evaluate

REVIEWS = [
    "a wonderful brilliant film",
    "",
    "   an awful boring mess   ",
    "the plot was charming and delightful",
]


def run_tool(*args, env=None, stdin=None, timeout=300):
    """Runs train.py / predict.py as a user would; returns the CompletedProcess."""
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, input=stdin, capture_output=True, timeout=timeout
    )


def smoke_args(review_files, workdir, *extra):
    train, test = review_files
    return [
        "train.py", "--config", "configs/smoke.py", "--workdir", str(workdir),
        f"--config.train_path={train}", f"--config.test_path={test}", *extra,
    ]  # fmt: skip


def final_state(workdir):
    """(parameter leaves of the latest checkpoint, final metrics line) of a finished run."""
    run = ckpt.Checkpoints(workdir, read_only=True)
    step = run.latest_step()
    meta = run.read_meta(step)
    predictor = load_predictor(workdir, step=step)
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(predictor.model))], json.loads(lines[-1]), meta


# ------------------------------------------------------------------------------------------ training


def test_training_learns_and_writes_its_outputs(trained_workdir):
    lines = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    history, final = lines[:-1], lines[-1]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert final["test_accuracy"] >= 0.75  # the sentiment words make this easy
    assert (trained_workdir / "training_curves.png").stat().st_size > 1000
    assert list((trained_workdir / "tensorboard").glob("events.out.tfevents.*"))
    run, manager, step = ckpt.find(trained_workdir)
    assert manager is run.best
    meta = run.read_meta(step, manager)
    # Each fact once: the config, the vocabulary and the data's sizes; nothing else to disagree with them.
    assert set(meta) == {"config", "vocabulary", "sizes", "history", "format_version", "arrays"}
    assert meta["vocabulary"][:1] and meta["sizes"] == {"vocab_size": len(meta["vocabulary"]) + 2,
                                                        "subword_rows": 0, "trained_rows": 0}  # fmt: skip
    assert "params/embedder/embed/embedding" in meta["arrays"]
    assert "opt_state/0/mu/embedder/embed/embedding" in meta["arrays"]


def tiny_state(config, vocab_size=50):
    from jax.sharding import Mesh

    from lstm_jax.sentiment.model.classifier import DataSizes
    from lstm_jax.sentiment.train.trainer import create_train_state

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    return create_train_state(config, DataSizes(vocab_size), mesh)


def tiny_examples(count=8, time=12, vocab_size=50, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(2, vocab_size, (count, time)).astype(np.int32),
        "lengths": rng.integers(1, time + 1, count).astype(np.int32),
        "labels": rng.integers(0, 2, count).astype(np.int32),
    }


def test_every_parameter_changes_in_one_step(review_files):
    from lstm_jax.sentiment.train.trainer import train_step

    config = load_config(bidirectional=True, num_layers=2, ema_decay=0.5)
    state = tiny_state(config)
    before = jax.tree.map(np.asarray, ckpt.named_leaves(state))
    order = np.arange(8, dtype=np.int32)[None]
    state = train_step(state, tiny_examples(), order, 12)
    after = ckpt.named_leaves(state)
    for name, old in before.items():
        if name.startswith(("params/", "ema/")):
            assert not np.array_equal(old, np.asarray(after[name])), f"{name} did not change"
    assert int(state.step) == 1 and int(state.batch) == 1 and float(state.sums["count"]) == 8


def test_the_step_and_evaluation_losses_are_the_cross_entropy_of_the_logits():
    """The step's loss and evaluation's are the summed cross-entropy against the labels (checked by hand on the
    model's logits)."""
    from lstm_jax.sentiment.train.trainer import eval_step, train_step, zero_sums

    config = load_config(dropout_rate=0.0, embedding_dropout_rate=0.0, word_dropout_rate=0.0)
    state = tiny_state(config)
    examples = tiny_examples()
    logits = np.asarray(state.model()(examples["tokens"], examples["lengths"]), np.float64)
    positive, negative = -np.log1p(np.exp(-logits)), -np.log1p(np.exp(logits))  # log p and log (1 - p)

    def cross_entropy(target):
        return -np.sum(target * positive + (1 - target) * negative)

    order = np.arange(8, dtype=np.int32)
    evaluated = eval_step(state, zero_sums(), examples, order, 12)
    assert float(evaluated["loss"]) == pytest.approx(cross_entropy(examples["labels"]), rel=1e-5)
    stepped = train_step(state, examples, order[None], 12)
    assert float(stepped.sums["loss"]) == pytest.approx(cross_entropy(examples["labels"]), rel=1e-5)


def test_train_step_compiles_once_per_padded_length():
    from lstm_jax.sentiment import batching
    from lstm_jax.sentiment.train.trainer import train_step

    config = load_config()
    state = tiny_state(config)
    examples = tiny_examples(count=64)
    before = train_step._cache_size()
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(64)
        plan = batching.plan_batches(examples["lengths"], 8, 4, 12, order)
        for padded in plan.time:
            state = train_step(state, examples, plan.indices, padded)
        state = state.replace(batch=np.int32(0))
    assert 1 <= train_step._cache_size() - before <= len(batching.bucket_sizes(4, 12))


def test_sigkill_at_any_moment_then_rerun_gives_the_same_result(review_files, tmp_path):
    extra = ["--config.num_epochs=6", "--config.checkpoint_every_steps=2"]
    reference = run_tool(*smoke_args(review_files, tmp_path / "reference", *extra))
    assert reference.returncode == 0, reference.stderr.decode()[-2000:]

    killed_dir = tmp_path / "killed"
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        [sys.executable, *smoke_args(review_files, killed_dir, *extra)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    # Kill once a few checkpoints exist, i.e. in the middle of training (and possibly of a save).
    while time.time() < deadline and process.poll() is None:
        steps = [p for p in (killed_dir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and max(int(p.name) for p in steps) >= 10:
            break
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (
        not (killed_dir / "metrics.jsonl").exists() or "test_accuracy" not in (killed_dir / "metrics.jsonl").read_text()
    )

    resumed = run_tool(*smoke_args(review_files, killed_dir, *extra))
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert b"resumed from step" in resumed.stdout
    want_params, want_final, want_meta = final_state(tmp_path / "reference")
    got_params, got_final, got_meta = final_state(killed_dir)
    for want, got in zip(want_params, got_params):
        np.testing.assert_array_equal(got, want)
    assert got_final == want_final
    assert got_meta["history"] == [
        {**h, "epoch_seconds": g["epoch_seconds"]} for h, g in zip(want_meta["history"], got_meta["history"])
    ]


def test_ctrl_c_saves_and_the_rerun_finishes(review_files, tmp_path):
    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, *smoke_args(review_files, workdir, "--config.num_epochs=50")],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert b"rerun the same command to resume" in stderr and b"Traceback" not in stderr
    saved = ckpt.Checkpoints(workdir, read_only=True).latest_step()
    assert saved is not None and saved >= 8
    finished = run_tool(
        *smoke_args(review_files, workdir, "--config.num_epochs=50", "--config.early_stopping_patience=2")
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert b"Accuracy: " in finished.stdout


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(review_files, tmp_path, monkeypatch):
    import jax.numpy as jnp
    import optax

    from lstm_jax.sentiment.train import trainer as train_lib

    def poisoned_after_five_steps(config):
        """Adam whose updates turn NaN from the sixth step on: a divergence we can place."""

        def update(updates, count, params=None):
            scale = jnp.where(count >= 5, jnp.nan, 1.0)
            return jax.tree.map(lambda u: u * scale, updates), count + 1

        poison = optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)
        return optax.chain(optax.adam(config.learning_rate), poison)

    monkeypatch.setattr(train_lib, "make_optimizer", poisoned_after_five_steps)
    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), num_epochs=4)
    with pytest.raises(NonFiniteLoss, match="non-finite by step 6"):
        train_and_evaluate(config, tmp_path)
    assert ckpt.Checkpoints(tmp_path, read_only=True).latest.all_steps() == [3]  # saved before the divergence
    predictor = load_predictor(tmp_path, step=3)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(nnx.state(predictor.model)))


def test_data_parallel_over_four_devices_equals_one_device(review_files, tmp_path):
    extra = ["--config.num_epochs=2", "--config.test_checkpoint=last"]
    one = run_tool(*smoke_args(review_files, tmp_path / "one", *extra))
    four = run_tool(
        *smoke_args(review_files, tmp_path / "four", *extra),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert one.returncode == 0 and four.returncode == 0, four.stderr.decode()[-2000:]
    assert b"4 device(s)" in four.stdout
    for a, b in zip(final_state(tmp_path / "one")[0], final_state(tmp_path / "four")[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    odd = run_tool(
        *smoke_args(review_files, tmp_path / "odd", "--config.batch_size=6"),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert odd.returncode == 2
    assert b"batch_size 6 does not divide by the 4 devices" in odd.stderr and b"Traceback" not in odd.stderr


def test_resuming_with_a_different_config_is_refused(trained_workdir, review_files):
    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), num_epochs=6, hidden_size=16)
    with pytest.raises(UserError, match="different config.*hidden_size"):
        train_and_evaluate(config, trained_workdir)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.bogus=1", "unknown config key 'bogus'"),
        ("--config.num_epochs=many", "--config.num_epochs=many"),
        ("--config=configs/missing.py", "config file configs/missing.py does not exist"),
        ("--config.batch_size=0", "--config.batch_size=0 must be between 1 and 1048576"),
        # More refused values: test_reliability.py's test_nonsense_settings_are_refused_before_anything_is_written.
    ],
)
def test_bad_config_flags_are_one_line_errors(flag, message, tmp_path, review_files):
    train, test = review_files
    # Real data paths, so only the flag under test is wrong (no paths with a config file that fails to load).
    paths = [] if flag.startswith("--config=") else [f"--config.train_path={train}", f"--config.test_path={test}"]
    result = run_tool("train.py", "--config", "configs/smoke.py", *paths, flag, "--workdir", str(tmp_path))
    assert result.returncode != 0
    stderr = result.stderr.decode().strip()
    assert message in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------------ prediction


def test_predict_writes_the_tutorial_format_in_input_order(trained_workdir, tmp_path):
    source = tmp_path / "reviews.txt"
    source.write_text("\n".join(REVIEWS) + "\n")
    output = tmp_path / "predictions.txt"
    result = run_tool("predict.py", "--workdir", str(trained_workdir), "--input", str(source), "--output", str(output))
    assert result.returncode == 0, result.stderr.decode()
    assert b"wrote 3 predictions" in result.stderr and b"1 empty lines skipped" in result.stderr
    blocks = output.read_text().split("-----\n")
    assert blocks[-1] == "" and len(blocks) == 4
    expected = [r.strip() for r in REVIEWS if r.strip()]
    sentiments = []
    for block, statement in zip(blocks, expected):
        first, second, rest = block.split("\n")
        assert first == f"Statement: {statement}" and rest == ""
        assert second in ("Predicted Sentiment: positive", "Predicted Sentiment: negative")
        sentiments.append(second.rsplit(" ", 1)[1])
    assert sentiments == ["positive", "negative", "positive"]


def test_predict_library_call_and_formats(trained_workdir, tmp_path):
    predictor = load_predictor(trained_workdir)
    texts = [r for r in REVIEWS if r]
    probabilities = predictor.predict(texts)
    assert probabilities.shape == (3,) and np.all((probabilities > 0) & (probabilities < 1))
    np.testing.assert_allclose(predictor.predict(texts[::-1]), probabilities[::-1], atol=1e-6)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(REVIEWS))
    predict_file(predictor, str(source), tmp_path / "out.jsonl", "jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["statement"] for r in records] == [t.strip() for t in texts]
    np.testing.assert_allclose([r["probability_positive"] for r in records], probabilities, atol=1e-5)
    predict_file(predictor, str(source), tmp_path / "out.csv", "csv", threshold=1.0)
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "statement,sentiment,probability_positive" and len(rows) == 4
    assert all(",negative," in row for row in rows[1:])  # threshold 1.0: nothing is positive


def test_predict_reads_stdin_and_replaces_invalid_utf8(trained_workdir, tmp_path):
    output = tmp_path / "p.txt"
    result = run_tool(
        "predict.py", "--workdir", str(trained_workdir), "--input", "-", "--output", str(output),
        stdin=b"good film \xff\xfe here\nawful\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert b"1 lines had invalid UTF-8 bytes" in result.stderr
    assert output.read_text().startswith("Statement: good film \ufffd\ufffd here\n")


def test_predict_truncates_a_ten_megabyte_line(trained_workdir, tmp_path):
    source = tmp_path / "long.txt"
    source.write_text("wonderful " * 1_000_000 + "\nawful\n")
    output = tmp_path / "p.jsonl"
    predict_file(load_predictor(trained_workdir), str(source), output, "jsonl")
    records = [json.loads(line) for line in output.read_text().splitlines()]
    # Read in bounded pieces: the first MiB of the line is the statement, the rest is skipped, not held.
    from lstm_jax.sentiment.files import MAX_LINE_BYTES

    assert len(records) == 2 and records[1]["statement"] == "awful"
    assert MAX_LINE_BYTES - 10 <= len(records[0]["statement"]) <= MAX_LINE_BYTES


def test_predict_step_selection(trained_workdir):
    steps = ckpt.Checkpoints(trained_workdir, read_only=True).latest.all_steps()
    assert ckpt.find(trained_workdir, steps[-1])[2] == steps[-1]
    with pytest.raises(UserError, match="no checkpoint for step 99999"):
        ckpt.find(trained_workdir, 99999)


def _copy_run(trained_workdir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_workdir, copy)
    return copy


def _with_tokenizer(trained_workdir, tmp_path, rules):
    """A copy of the run whose checkpoint's config records other tokenizer rules (the one place it is kept)."""
    copy = _copy_run(trained_workdir, tmp_path / rules)
    for path in (copy / "best").rglob("meta/metadata"):
        if path.is_file():
            meta = json.loads(path.read_text())
            meta["config"]["tokenizer"] = rules
            path.write_text(json.dumps(meta))
    return copy


def test_prediction_tokenizes_by_the_rules_the_checkpoint_records(trained_workdir, tmp_path):
    plain = load_predictor(trained_workdir)
    folding = load_predictor(_with_tokenizer(trained_workdir, tmp_path, "lowercase-words-v2"))
    assert (plain.vocabulary.rules, folding.vocabulary.rules) == ("lowercase-words-v1", "lowercase-words-v2")
    text = ["it\u2019s great"]
    assert plain.vocabulary.encode(text, 12)[1][0] == 3 and folding.vocabulary.encode(text, 12)[1][0] == 2
    np.testing.assert_array_equal(folding.predict(["great fun"]), plain.predict(["great fun"]))


def _corrupt_params(workdir):
    for path in (workdir / "best").rglob("*"):
        if path.is_file() and "state" in path.parts and path.stat().st_size > 0:
            path.write_bytes(b"\x00garbage")


def _partial_checkpoint(workdir):
    for path in (workdir / "best").rglob("*"):
        if path.is_file() and "state" in path.parts:
            path.unlink()


def _old_version(workdir):
    """A checkpoint of format 2 as the earlier version wrote it: model arguments and data settings beside the
    config, no sizes."""
    for path in (workdir / "best").rglob("meta/metadata"):
        if path.is_file():
            meta = json.loads(path.read_text())
            meta["format_version"] = 2
            meta["model_kwargs"], meta["data"] = {"vocab_size": 10}, {"max_len": 12}
            path.write_text(json.dumps(meta))


def _unknown_version(workdir):
    for path in (workdir / "best").rglob("meta/metadata"):
        if path.is_file():
            path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": "x"}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt_params, "unreadable or incomplete"),
        (_partial_checkpoint, "unreadable or incomplete"),
        (_old_version, "was made by an earlier version of lstm_jax (checkpoint format 2; this one reads 3); "
                       "retrain it with this version"),
        (_unknown_version, "has format version 'x', this lstm_jax reads version 3"),
    ],
)
def test_damaged_checkpoints_are_clear_errors_and_existing_output_survives(trained_workdir, tmp_path, damage, message):
    workdir = _copy_run(trained_workdir, tmp_path)
    damage(workdir)
    source, output = tmp_path / "in.txt", tmp_path / "predictions.txt"
    source.write_text("fine\n")
    output.write_text("precious earlier predictions\n")
    result = run_tool("predict.py", "--workdir", str(workdir), "--input", str(source), "--output", str(output))
    assert result.returncode == 2
    stderr = result.stderr.decode().strip()
    assert message in stderr and "Traceback" not in stderr, stderr
    assert output.read_text() == "precious earlier predictions\n"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_input", "does not exist or is not a file"),
        ("empty_input", "has no statements"),
        ("no_checkpoint", "no checkpoint in"),
        ("missing_workdir", "does not exist; train first"),
        ("missing_output_folder", "the folder of output"),
        ("unreadable_input", "cannot read input"),
    ],
)
def test_bad_prediction_inputs(trained_workdir, tmp_path, case, message):
    source, output = tmp_path / "in.txt", tmp_path / "predictions.txt"
    source.write_text("fine\n")
    workdir = trained_workdir
    if case == "missing_input":
        source = tmp_path / "nope.txt"
    elif case == "empty_input":
        source.write_text("\n   \n\n")
    elif case == "no_checkpoint":
        workdir = tmp_path / "empty_run"
        workdir.mkdir()
    elif case == "missing_workdir":
        workdir = tmp_path / "never_trained"
    elif case == "missing_output_folder":
        output = tmp_path / "no" / "such" / "predictions.txt"
    elif case == "unreadable_input":
        if os.geteuid() == 0:
            pytest.skip("root can read any file")
        source.chmod(0)
    result = run_tool("predict.py", "--workdir", str(workdir), "--input", str(source), "--output", str(output))
    assert result.returncode == 2
    stderr = result.stderr.decode().strip()
    assert message in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert not output.exists()
    assert not list(tmp_path.rglob(".predictions.txt.*"))  # no temporary file left anywhere


def test_interrupted_prediction_leaves_no_partial_file(trained_workdir, tmp_path, monkeypatch):
    predictor = load_predictor(trained_workdir, batch_size=2)
    source, output = tmp_path / "in.txt", tmp_path / "predictions.txt"
    source.write_text("good\n" * 100)  # 100 statements, predicted 16 at a time (chunks of 8 batches of 2)
    calls = []

    def failing_predict(texts, original=predictor.predict):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(texts)

    monkeypatch.setattr(predictor, "predict", failing_predict)
    with pytest.raises(KeyboardInterrupt):
        predict_file(predictor, str(source), output)
    assert not output.exists() and not list(tmp_path.glob(".predictions.txt.*"))


def test_a_statement_without_words_is_predicted_from_the_bias_alone(trained_workdir):
    predictor = load_predictor(trained_workdir)
    probabilities = predictor.predict(["...", "good", "--"])
    # Length 0: the final LSTM state is the initial zeros, so the logit is the head's bias alone.
    bias_only = float(jax.nn.sigmoid(predictor.model.head.linear.bias[...][0]))
    np.testing.assert_allclose(probabilities[[0, 2]], [bias_only, bias_only], rtol=1e-6)
    assert abs(probabilities[1] - bias_only) > 1e-4


def test_weight_averaging_is_what_evaluation_and_prediction_use(review_files, tmp_path):
    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), ema_decay=0.5, num_epochs=2)
    train_and_evaluate(config, tmp_path)
    run = ckpt.Checkpoints(tmp_path, read_only=True)
    step = run.latest_step()
    predictor = load_predictor(tmp_path, step=step)
    params, _ = nnx.state(predictor.model, nnx.Param, ...)
    raw = ckpt.restore_weights(run, run.latest, step, {"params": params})["params"]
    averaged = ckpt.restore_weights(run, run.latest, step, {"ema": params})["ema"]
    for used, ema in zip(jax.tree.leaves(params), jax.tree.leaves(averaged)):
        np.testing.assert_array_equal(used, ema)
    assert any(not np.array_equal(e, p) for e, p in zip(jax.tree.leaves(averaged), jax.tree.leaves(raw)))


def test_without_a_validation_split_every_example_trains_and_the_last_weights_are_tested(review_files, tmp_path):
    from lstm_jax.sentiment.data.datasets import load_splits

    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), validation_fraction=0.0, num_epochs=2,
                         early_stopping_patience=0, ngram_buckets=1 << 10)  # fmt: skip
    splits, carved = load_splits(config), load_splits(load_config(train_path=str(train), test_path=str(test)))
    assert len(splits.validation) == 0 and len(splits.train) == len(carved.train) + len(carved.validation) > 0
    final = train_and_evaluate(config, tmp_path)  # test_checkpoint "best" falls back to the last weights
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][:-1]
    assert len(history) == 2 and not any(key.startswith("val_") for entry in history for key in entry)
    assert final["test_checkpoint_step"] == history[-1]["step"] and final["best_val_accuracy"] is None
    assert ckpt.Checkpoints(tmp_path, read_only=True).best.all_steps() == []
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    assert load_predictor(tmp_path).predict(["wonderful brilliant", "awful boring"]).shape == (2,)


# ------------------------------------------------------------------------------------------ the rebuilt job


def test_the_readme_default_config_with_every_option_trains_on_tiny_data(review_files, tmp_path):
    """configs/default.py (mean+max pooling, PPMI-SVD, word and embedding dropout, early stopping, length pools)
    plus EMA, subword embeddings and the static channel, shrunk to tiny data."""
    train, test = review_files
    config = load_config(
        "default", dataset="files", train_path=str(train), test_path=str(test), vocab_size=60, max_len=12,
        embedding_dim=8, hidden_size=8, batch_size=8, num_epochs=8, learning_rate=2e-2, ema_decay=0.5,
        early_stopping_patience=2, length_bucket=4, subword_buckets=256, static_embeddings=True,
    )  # fmt: skip
    final = train_and_evaluate(config, tmp_path)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][:-1]
    assert 3 <= len(history) <= 8 and final["test_accuracy"] >= 0.75
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
    assert final["test_checkpoint_step"] == history[best_epoch]["step"]  # the first best epoch is tested
    predictor = load_predictor(tmp_path)
    assert predictor.length_bucket == 4 and predictor.max_len == 12  # data settings come from the checkpoint
    probabilities = predictor.predict(["wonderful brilliant", "awful boring"])
    assert probabilities[0] > 0.5 > probabilities[1]


def test_restoring_into_a_model_with_other_names_or_shapes_is_refused(trained_workdir):
    run = ckpt.Checkpoints(trained_workdir, read_only=True)
    step = run.latest_step()
    state = tiny_state(load_config(), vocab_size=run.read_meta(step)["sizes"]["vocab_size"])
    restored = run.restore(step, state)  # same names and shapes: fine, and the values are the saved ones
    kernel = lambda state: state.params["head"]["linear"]["kernel"][...]  # noqa: E731
    assert int(restored.step) == step and not np.array_equal(kernel(restored), kernel(state))
    renamed = state.replace(params=nnx_state_with_renamed_head(state.params))
    renamed_message = ("missing params/classifier/linear/bias, params/classifier/linear/kernel; unexpected "
                       "params/head/linear/bias")  # fmt: skip
    with pytest.raises(UserError, match=renamed_message):
        run.restore(step, renamed)
    wider = tiny_state(load_config(hidden_size=16),
                       vocab_size=restored.params["embedder"]["embed"]["embedding"].shape[0])  # fmt: skip
    resized_message = r"changed opt_state/0/mu/encoder/layers/0/cell/bias: saved \(32,\) float32, model \(64,\) float32"
    with pytest.raises(UserError, match=resized_message):
        run.restore(step, wider)


def nnx_state_with_renamed_head(params):
    """The same arrays with the head under another name: what a refactor of the model would do."""
    from flax import nnx

    pure = nnx.to_pure_dict(params)
    pure["classifier"] = pure.pop("head")
    return nnx.State(pure)


def test_training_longer_continues_the_same_run(review_files, tmp_path):
    extra = ["--config.test_checkpoint=last"]
    short = run_tool(*smoke_args(review_files, tmp_path / "short", "--config.num_epochs=2", *extra))
    assert short.returncode == 0, short.stderr.decode()[-2000:]
    longer = run_tool(*smoke_args(review_files, tmp_path / "short", "--config.num_epochs=3", *extra))
    assert longer.returncode == 0, longer.stderr.decode()[-2000:]
    assert b"resumed from step 16 (epoch 3, batch 0)" in longer.stdout
    whole = run_tool(*smoke_args(review_files, tmp_path / "whole", "--config.num_epochs=3", *extra))
    for got, want in zip(final_state(tmp_path / "short")[0], final_state(tmp_path / "whole")[0]):
        np.testing.assert_array_equal(got, want)
    assert whole.returncode == 0
    other = run_tool(*smoke_args(review_files, tmp_path / "short", "--config.num_epochs=4",
                                 "--config.learning_rate=0.5"))  # fmt: skip
    assert other.returncode == 2 and b"changed: learning_rate" in other.stderr


def test_a_second_run_reuses_the_compilation_cache(review_files, tmp_path):
    cache = tmp_path / "jax_cache"
    args = [f"--config.compilation_cache_dir={cache}", "--config.num_epochs=1"]
    first = run_tool(*smoke_args(review_files, tmp_path / "one", *args))
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) >= 3  # init, train and eval steps at least
    second = run_tool(*smoke_args(review_files, tmp_path / "two", *args))
    assert second.returncode == 0 and sorted(p.name for p in cache.iterdir()) == entries  # all hits
    off = run_tool(*smoke_args(review_files, tmp_path / "three", "--config.compilation_cache_dir=off",
                               "--config.num_epochs=0", f"--config.cache_dir={tmp_path / 'other'}"))  # fmt: skip
    assert off.returncode == 0 and not (tmp_path / "other").exists()


def test_validation_and_test_share_arrays_and_compilations():
    from jax.sharding import Mesh

    from lstm_jax.sentiment.data import datasets as data_lib
    from lstm_jax.sentiment.tokenizer import Vocabulary
    from lstm_jax.sentiment.train.trainer import Evaluator, device_splits, eval_step

    config = load_config(length_bucket=4)
    state = tiny_state(config, vocab_size=12)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    vocabulary = Vocabulary([f"w{i}" for i in range(10)])
    first = data_lib.Split([" ".join(f"w{i % 10}" for i in range(n)) for n in (1, 5, 9, 2, 7)],
                           np.array([0, 1, 0, 1, 1]))  # fmt: skip
    second = data_lib.Split([" ".join(f"w{(3 * i) % 10}" for i in range(n)) for n in (6, 3, 11)], np.array([1, 0, 1]))
    shared = device_splits(vocabulary, [first, second], config.max_len, mesh)
    assert shared[0].examples is shared[1].examples and shared[1].first_row == 5
    Evaluator(shared[0], config, mesh)(state)  # padded lengths 8 and 12
    compiled = eval_step._cache_size()
    got = Evaluator(shared[1], config, mesh)(state)  # padded length 12 only: compiled already
    assert eval_step._cache_size() == compiled
    alone = device_splits(vocabulary, [second], config.max_len, mesh)[0]
    assert got == pytest.approx(Evaluator(alone, config, mesh)(state), rel=1e-6)


def test_load_predictor_from_python_prints_no_orbax_warnings(trained_workdir):
    code = ("from lstm_jax.sentiment.deploy.predict import load_predictor\n"
            f"print(load_predictor({str(trained_workdir)!r}).predict(['great'])[0])")
    result = run_tool("-c", code)
    assert result.returncode == 0, result.stderr.decode()
    assert "WARNING" not in result.stderr.decode(), result.stderr.decode()
    assert 0.0 < float(result.stdout) < 1.0


def test_training_curves_have_a_title_the_tested_epoch_and_percent():
    from lstm_jax.sentiment.train.reporting import curves_figure

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_accuracy": a, "val_accuracy": a}
               for e, a in ((1, 0.6), (2, 0.8), (3, 0.8), (4, 0.7))]  # fmt: skip
    figure = curves_figure(history, "gru on rt", tested="best", planned_epochs=10)
    assert figure._suptitle.get_text() == "gru on rt"
    loss, accuracy = figure.axes
    assert accuracy.get_ylabel() == "accuracy (%)"
    assert max(accuracy.lines[1].get_ydata()) == pytest.approx(80.0)  # validation, in percent
    labels = [line.get_label() for line in accuracy.lines]
    assert "tested (epoch 2)" in labels and "early stop (of 10)" in labels  # the first best epoch
    assert "early stop (of 4)" not in [line.get_label() for line in curves_figure(history, "", "last", 4).axes[0].lines]


def test_length_pooled_training_resumes_to_the_same_weights_and_changes_the_batches(tmp_path, monkeypatch):
    from conftest import write_reviews

    from lstm_jax.sentiment import batching

    # Reviews of 8 words padded with 0 to 9 fillers, so pooling by length does reorder them.
    base = write_reviews(tmp_path / "base.csv", 64, seed=4).read_text().splitlines()
    rows = [f'"{row.split(",")[0]}{" the" * (index % 10)}",{row.split(",")[1]}' for index, row in enumerate(base[1:])]
    train = tmp_path / "train.csv"
    train.write_text("\n".join([base[0], *rows]) + "\n")
    settings = dict(train_path=str(train), test_path=str(train), max_len=20, length_bucket=10, length_pool=4)
    train_and_evaluate(load_config(num_epochs=1, **settings), tmp_path / "resumed")
    resumed = train_and_evaluate(load_config(num_epochs=2, **settings), tmp_path / "resumed")
    plans = []
    planner = batching.plan_training_batches
    monkeypatch.setattr(batching, "plan_training_batches", lambda *args: plans.append(planner(*args)) or plans[-1])
    straight = train_and_evaluate(load_config(num_epochs=2, **settings), tmp_path / "straight")
    assert resumed == straight
    # Pooled training batches padded to multiples of 8 (lengths 8-17), not of length_bucket 10 ...
    assert len(plans) == 2 and {time for plan in plans for time in plan.time} <= {8, 16, 20}
    assert 16 in {time for plan in plans for time in plan.time}
    # ... which stays the checkpoint's setting for prediction and serving.
    assert load_predictor(tmp_path / "straight").length_bucket == 10
    plain = train_and_evaluate(load_config(num_epochs=2, **{**settings, "length_pool": 0}), tmp_path / "plain")
    assert plain["test_loss"] != straight["test_loss"]
