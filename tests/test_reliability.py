"""Careless users, hostile files and schedulers: each case runs the real command and checks that nothing is lost,
the error is one line, and no traceback escapes."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, load_config
from test_job import run_tool, smoke_args

from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.errors import UserError


def one_line_error(result, message):
    stderr = result.stderr.decode().strip()
    assert result.returncode not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    assert message in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr


def predict(workdir, source, output, *extra, **kwargs):
    return run_tool("predict.py", "--workdir", str(workdir), "--input", str(source), "--output", str(output), *extra,
                    **kwargs)  # fmt: skip


# ------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("spelling", ["same", "dotted", "link"])
def test_the_output_can_never_be_the_input(trained_workdir, tmp_path, spelling):
    folder = tmp_path / "dir"
    folder.mkdir()
    source = folder / "r.txt"
    source.write_text("a wonderful film\n")
    output = {"same": source, "dotted": f"{folder}/./../dir/r.txt", "link": tmp_path / "link.txt"}[spelling]
    if spelling == "link":
        os.symlink(source, output)
    one_line_error(predict(trained_workdir, source, output), "is the input file")
    assert source.read_text() == "a wonderful film\n"


def test_devices_fifos_links_and_stdout_are_written_through(trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a wonderful film\nan awful mess\n")
    to_stdout = predict(trained_workdir, source, "-")
    assert to_stdout.returncode == 0 and to_stdout.stdout.decode().count("Predicted Sentiment:") == 2
    assert b"to standard output" in to_stdout.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    assert predict(trained_workdir, source, fifo).returncode == 0
    reader.join(timeout=60)
    assert received and received[0].count("-----") == 2 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    os.symlink(target, link)
    assert predict(trained_workdir, source, link).returncode == 0
    assert os.path.islink(link) and target.read_text().count("-----") == 2
    null = predict(trained_workdir, source, "/dev/null")
    assert null.returncode == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_new_outputs_follow_the_umask_and_existing_ones_keep_their_mode(trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("fine\n")
    fresh, kept = tmp_path / "fresh.txt", tmp_path / "kept.txt"
    kept.write_text("old\n")
    kept.chmod(0o640)
    previous = os.umask(0o022)
    try:
        assert predict(trained_workdir, source, fresh).returncode == 0
        assert predict(trained_workdir, source, kept).returncode == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and "Statement: fine" in kept.read_text()


def statements_and_a_precious_output(tmp_path, text):
    """An input file and an existing output that a failed run must leave as it was."""
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text(text)
    output.write_text("precious\n")
    return source, output


def test_sigterm_during_prediction_leaves_no_temporary_file(trained_workdir, tmp_path):
    source, output = statements_and_a_precious_output(tmp_path, "a long and winding film with many words\n" * 400_000)
    process = subprocess.Popen(
        [sys.executable, "predict.py", "--workdir", str(trained_workdir), "--input", str(source), "--output",
         str(output)], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".out.txt.*")):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and b"Traceback" not in stderr
    assert output.read_text() == "precious\n" and not list(tmp_path.glob(".out.txt.*"))


def test_a_file_size_limit_is_one_line_and_loses_nothing(trained_workdir, tmp_path):
    source, output = statements_and_a_precious_output(tmp_path, "a wonderful film\n" * 5000)
    # A file-size limit (in KiB) is what a full disk or a quota looks like to the writer.
    result = subprocess.run(
        ["bash", "-c", 'ulimit -f 48 && exec "$0" "$@"', sys.executable, "predict.py", "--workdir",
         str(trained_workdir), "--input", str(source), "--output", str(output)],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
    )  # fmt: skip
    one_line_error(result, "File too large")
    assert output.read_text() == "precious\n" and not list(tmp_path.glob(".out.txt.*"))


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_byte_order_marked_input_reads_like_utf8(trained_workdir, tmp_path, encoding):
    lines = "a wonderful film\nan awful mess ☹\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(lines, encoding="utf-8")
    marked.write_bytes(lines.encode(encoding))
    assert predict(trained_workdir, plain, tmp_path / "a.txt").returncode == 0
    result = predict(trained_workdir, marked, tmp_path / "b.txt")
    assert result.returncode == 0 and b"wrote 2 predictions" in result.stderr and b"invalid" not in result.stderr
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()


def test_training_reads_bom_marked_csv_and_refuses_bad_columns(tmp_path, review_files):
    from lstm_jax.sentiment.data.datasets import read_labelled_file

    train, _ = review_files
    text = train.read_text()
    for encoding in ("utf-8-sig", "utf-16"):
        marked = tmp_path / f"{encoding}.csv"
        marked.write_bytes(text.encode(encoding))
        split = read_labelled_file(str(marked))
        assert len(split) == 64 and split.texts == read_labelled_file(str(train)).texts
    duplicated = tmp_path / "dup.csv"
    duplicated.write_text("text,label,label\ngood,1,0\n")
    with pytest.raises(UserError, match="dup.csv: the header repeats column 'label'"):
        read_labelled_file(str(duplicated))
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label\ngood,1\nbad,0,surprise\n")
    with pytest.raises(UserError, match="extra.csv:3: 3 fields, the header has 2"):
        read_labelled_file(str(extra))
    short = tmp_path / "short.csv"
    short.write_text("text,label\ngood\n")
    with pytest.raises(UserError, match="short.csv:2: 1 fields, the header has 2"):
        read_labelled_file(str(short))


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.batch_size=-8", "--config.batch_size=-8 must be"),
        ("--config.learning_rate=-1", "--config.learning_rate=-1.0 must be"),
        ("--config.max_len=0", "--config.max_len=0 must be"),
        ("--config.num_epochs=-1", "--config.num_epochs=-1 must be"),
        ("--config.ema_decay=1.5", "--config.ema_decay=1.5 must be in [0, 1)"),
        ("--config.num_layers=0", "--config.num_layers=0 must be"),
        ("--config.dtype=int8", "--config.dtype='int8' is not one of float32, bfloat16"),
        ("--config.hidden_size=0", "--config.hidden_size=0 must be"),
        ("--config.embedding_dim=0", "--config.embedding_dim=0 must be"),
        ("--config.checkpoint_every_steps=0", "--config.checkpoint_every_steps=0 must be"),
        ("--config.vocab_size=2", "--config.vocab_size=2 must be"),
        ("--config.num_layers=100000", "--config.num_layers=100000 must be"),
        ("--config.backend=cudnn", "backend='cudnn' cannot run here: it needs an NVIDIA GPU"),
        ("--config.backend=tpu", "--config.backend='tpu' is not one of auto, scan, fused, native, cudnn"),
        ("--config.cell=gru --config.backend=fused", "backend='fused' runs plain LSTMCell only, not GRUCell"),
        ("--config.cell=transformer", "--config.cell='transformer' is not one of lstm, peephole_lstm"),
        ("--config.dropout_rate=1.5", "--config.dropout_rate=1.5 must be in [0, 1)"),
        ("--config.word_dropout_rate=1", "--config.word_dropout_rate=1.0 must be in [0, 1)"),
        ("--config.ngram_buckets=1000", "--config.ngram_buckets=1000 must be a power of two"),
        ("--config.validation_fraction=0 --config.early_stopping_patience=2",
         "early stopping needs a validation split"),
        ("--config.tokenizer=bpe", "--config.tokenizer='bpe' is not one of lowercase-words-v1, lowercase-words-v2"),
        ("--config.length_pool=-1", "--config.length_pool=-1 must be between 0 and"),
        ("--config.subword_buckets=-1", "--config.subword_buckets=-1 must be between 0 and"),
        ("--config.static_embeddings=True", "--config.static_embeddings adds a frozen copy of the initial vectors"),
    ],
)
def test_nonsense_settings_are_refused_before_anything_is_written(flag, message, tmp_path, review_files):
    """In the job's own process (a UserError becomes one line and exit code 2 in the entry points: that path is
    test_job.py's test_bad_config_flags_are_one_line_errors, through real processes)."""
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test))
    for setting in flag.split():
        key, value = setting.removeprefix("--config.").split("=", 1)
        config[key] = value if isinstance(config[key], str) else type(config[key])(value)
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as refused:
        train_and_evaluate(config, workdir)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not workdir.exists()
    assert not workdir.exists()


def test_a_workdir_that_is_a_file_or_read_only(tmp_path, review_files):
    as_file = tmp_path / "file"
    as_file.write_text("keep me\n")
    one_line_error(run_tool(*smoke_args(review_files, as_file)), "is not a folder")
    assert as_file.read_text() == "keep me\n"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    one_line_error(run_tool(*smoke_args(review_files, read_only)), "cannot write in workdir")


# ------------------------------------------------------------------------------------------ runs


def test_sigterm_saves_like_ctrl_c_and_the_rerun_resumes_exactly(review_files, tmp_path):
    extra = ["--config.num_epochs=6", "--config.test_checkpoint=last"]  # signalled after epoch 1
    workdir = tmp_path / "preempted"
    process = subprocess.Popen([sys.executable, *smoke_args(review_files, workdir, *extra)], cwd=ROOT,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and b"rerun the same command to resume" in stderr and b"Traceback" not in stderr
    saved = ckpt.Checkpoints(workdir, read_only=True).latest_step()
    resumed = run_tool(*smoke_args(review_files, workdir, *extra))
    assert resumed.returncode == 0 and f"resumed from step {saved}".encode() in resumed.stdout
    whole = run_tool(*smoke_args(review_files, tmp_path / "whole", *extra))
    assert whole.returncode == 0
    want = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1]) == want


def test_one_writer_per_workdir(review_files, tmp_path):
    workdir = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, *smoke_args(review_files, workdir, "--config.num_epochs=60")], cwd=ROOT,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.05)
    second = run_tool(*smoke_args(review_files, workdir, "--config.num_epochs=60"))
    first.kill()
    first.wait()
    one_line_error(second, f"is in use by another training run (process {first.pid})")
    # A dead holder does not block: the lock went with its process.
    finished = run_tool(*smoke_args(review_files, workdir, "--config.num_epochs=2"))
    assert finished.returncode in (0, 2), finished.stderr.decode()
    assert b"is in use" not in finished.stderr


def test_resume_falls_back_to_the_newest_intact_checkpoint(review_files, tmp_path):
    extra = ["--config.num_epochs=2", "--config.keep_checkpoints=3", "--config.test_checkpoint=last"]
    workdir = tmp_path / "damaged"
    assert run_tool(*smoke_args(review_files, workdir, *extra)).returncode == 0
    steps = ckpt.Checkpoints(workdir, read_only=True).latest.all_steps()
    for path in (workdir / "checkpoints" / str(steps[-1]) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    resumed = run_tool(*smoke_args(review_files, workdir, *extra))
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert f"checkpoint {steps[-1]} is damaged".encode() in resumed.stderr
    assert f"resumed from step {steps[-2]}".encode() in resumed.stdout


# ------------------------------------------------------------------------------------------ checkpoints


def test_non_finite_weights_never_reach_a_predictions_file(trained_workdir, tmp_path):
    workdir = tmp_path / "nan"
    shutil.copytree(trained_workdir, workdir)
    run = ckpt.Checkpoints(workdir, read_only=True)
    step = run.latest_step()
    meta = run.read_meta(step)
    from test_job import tiny_state

    state = run.restore(step, tiny_state(load_config(), vocab_size=meta["sizes"]["vocab_size"]))
    state = state.replace(params=jax_tree_map(lambda x: x * np.nan, state.params))  # a diverged run's weights
    shutil.rmtree(workdir / "best")
    shutil.rmtree(workdir / "checkpoints")
    run = ckpt.Checkpoints(workdir)
    run.save(step, state, meta)
    run.close()
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("fine\n")
    one_line_error(predict(workdir, source, output, "--format", "jsonl"), "non-finite weights")
    assert not output.exists()


def jax_tree_map(function, tree):
    import jax

    return jax.tree.map(function, tree)


@pytest.mark.parametrize(
    "key, value, message",
    [("num_layers", 200000, "num_layers=200000 must be"), ("max_len", -1, "max_len=-1 must be"),
     ("dtype", "object", "dtype='object' is not one of")],
)  # fmt: skip
def test_hostile_checkpoint_metadata_is_refused_before_building_anything(trained_workdir, tmp_path, key, value,
                                                                         message):  # fmt: skip
    workdir = tmp_path / "hostile"
    shutil.copytree(trained_workdir, workdir)
    for path in workdir.rglob("meta/metadata"):
        meta = json.loads(path.read_text())
        meta["config"][key] = value
        path.write_text(json.dumps(meta))
    source = tmp_path / "in.txt"
    source.write_text("fine\n")
    started = time.time()
    one_line_error(predict(workdir, source, tmp_path / "out.txt"), message)
    assert time.time() - started < 60


def test_a_hostile_subword_table_size_is_refused(trained_workdir, tmp_path):
    """``subword_rows`` comes from the data, not the config, so it has a check of its own."""
    workdir = tmp_path / "hostile"
    shutil.copytree(trained_workdir, workdir)
    for path in workdir.rglob("meta/metadata"):
        meta = json.loads(path.read_text())
        meta["sizes"]["subword_rows"] = 10**12
        path.write_text(json.dumps(meta))
    source = tmp_path / "in.txt"
    source.write_text("fine\n")
    one_line_error(predict(workdir, source, tmp_path / "out.txt"), "subword_rows=1000000000000 must be between 0 and 0")


# ------------------------------------------------------------------------------------------ hostile data


def test_the_imdb_folder_reader_ignores_links_out_of_the_dataset(tmp_path):
    from lstm_jax.sentiment.data.datasets import _imdb_files

    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "0_7.txt").write_text(f"a {label} review")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    os.symlink(secret, root / "train" / "pos" / "1_9.txt")
    texts = [text for _, _, _, text in _imdb_files(root)]
    assert len(texts) == 4 and not any("root:x" in text for text in texts)


def test_training_csv_lines_are_bounded(tmp_path):
    from lstm_jax.sentiment.data.datasets import read_labelled_file
    from lstm_jax.sentiment.files import MAX_LINE_BYTES

    path = tmp_path / "huge.csv"
    path.write_text("text,label\n" + "word " * (MAX_LINE_BYTES // 2) + ",1\n")
    with pytest.raises(UserError, match="huge.csv:2: a field longer than"):
        read_labelled_file(str(path))


def test_imdb_archive_members_are_read_bounded(tmp_path):
    import io
    import tarfile

    from lstm_jax.sentiment.data.datasets import MAX_REVIEW_BYTES, _imdb_files

    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("aclImdb/train/pos/0_9.txt", b"fine film"),
                           ("aclImdb/train/neg/0_1.txt", b"a" * (8 * MAX_REVIEW_BYTES))]:  # fmt: skip
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    assert archive.stat().st_size < 100_000  # a small archive that expands to 8 MiB
    texts = sorted(text for _, _, _, text in _imdb_files(archive))
    assert texts[1] == "fine film" and len(texts[0]) == MAX_REVIEW_BYTES


def test_a_data_error_after_the_checkpoints_exist_is_still_one_line(review_files, tmp_path):
    workdir = tmp_path / "run"
    missing = tmp_path / "nope.csv"
    result = run_tool("train.py", "--config", "configs/smoke.py", "--workdir", str(workdir),
                      f"--config.train_path={missing}", f"--config.test_path={missing}")  # fmt: skip
    one_line_error(result, f"data file {missing} does not exist")


def test_a_file_size_limit_during_training_is_reported_and_the_rerun_finishes(review_files, tmp_path):
    """Limit 20 KiB: the curves PNG fails (one line). Limit 6 KiB: a checkpoint write fails inside orbax's
    background threads, which may print their own tracebacks first (a known limit, in the README); our
    error line is there, the exit code is 2 and the rerun resumes from the last complete checkpoint."""
    for limit_kib in (20, 6):
        workdir = tmp_path / f"run{limit_kib}"
        result = subprocess.run(
            ["bash", "-c", f'ulimit -f {limit_kib} && exec "$0" "$@"', sys.executable,
             *smoke_args(review_files, workdir)],
            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        )  # fmt: skip
        if limit_kib == 20:
            one_line_error(result, "File too large")
        else:
            assert result.returncode == 2
            stderr = result.stderr.decode()
            assert "error: could not write a checkpoint" in stderr and "File too large" in stderr
        rerun = run_tool(*smoke_args(review_files, workdir))
        assert rerun.returncode == 0 and b"Accuracy: " in rerun.stdout, rerun.stderr.decode()[-2000:]


def test_a_sigterm_whose_exception_was_dropped_still_leaves_the_output_alone(tmp_path, monkeypatch):
    """Python runs the SIGTERM handler wherever the main thread is; inside a finalizer or callback its
    KeyboardInterrupt is printed and dropped. The signal is remembered, so the output is still not replaced."""
    import threading

    from lstm_jax.sentiment import errors
    from lstm_jax.sentiment.files import SafeOutput

    monkeypatch.setattr(errors, "_interrupted", threading.Event())
    previous = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "out.txt"
    target.write_text("precious\n")
    try:
        errors.interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt), SafeOutput(target) as handle:
            handle.write("partial")
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except KeyboardInterrupt:
                pass  # what a finalizer does with it
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert target.read_text() == "precious\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_an_interrupt_while_the_output_opens_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A SIGTERM's KeyboardInterrupt can land inside SafeOutput.__enter__, after the temporary file exists, where
    no __exit__ runs (test_sigterm_during_prediction_leaves_no_temporary_file hit it once, in a fresh clone)."""
    from lstm_jax.sentiment import files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = tmp_path / "out.txt"
    target.write_text("precious\n")
    monkeypatch.setattr(files, "open", interrupted, raising=False)  # the file object around the new descriptor
    with pytest.raises(KeyboardInterrupt), files.SafeOutput(target):
        pass
    assert target.read_text() == "precious\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_sigterm_inside_a_garbage_collector_callback_is_remembered_not_dropped(monkeypatch):
    """JAX registers a gc callback; a KeyboardInterrupt raised in there would be printed (a traceback) and lost."""
    import gc
    import threading

    from lstm_jax.sentiment import errors

    monkeypatch.setattr(errors, "_interrupted", threading.Event())
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    previous = signal.getsignal(signal.SIGTERM)

    def callback(phase, info):
        if phase == "start":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs while this callback is the current frame

    try:
        errors.interrupt_on_sigterm()
        gc.callbacks.append(callback)
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
        signal.signal(signal.SIGTERM, previous)
    assert dropped == []
    with pytest.raises(KeyboardInterrupt):
        errors.raise_if_interrupted()


# ------------------------------------------------------------------------------------------ as an ordinary user


def as_ordinary_user(*args):
    """A command whose file access obeys permissions even when the tests run as root (as CI does): root without
    its capabilities (``setpriv``), so a mode of 000 really refuses it."""
    if os.geteuid() != 0:
        return list(args)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *args]


def run_as_ordinary_user(*args):
    return subprocess.run(as_ordinary_user(sys.executable, *args), cwd=ROOT, capture_output=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip


def test_checkpoints_that_cannot_be_read_are_never_deleted(trained_workdir, review_files, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    steps = sorted((workdir / "checkpoints").iterdir())
    assert len(steps) == 2
    for step in steps:
        (step / "state" / "manifest.ocdbt").chmod(0)
    result = run_as_ordinary_user(*smoke_args(review_files, workdir, "--config.num_epochs=8"))
    one_line_error(result, "(Permission denied); fix its permissions or the disk and rerun (nothing was deleted)")
    assert sorted((workdir / "checkpoints").iterdir()) == steps
    for step in steps:
        (step / "state" / "manifest.ocdbt").chmod(0o644)
    result = run_tool(*smoke_args(review_files, workdir, "--config.num_epochs=8"))  # readable again: it resumes
    assert result.returncode == 0 and b"resumed from step" in result.stderr + result.stdout, result.stderr


def test_with_every_latest_checkpoint_damaged_the_best_one_is_the_fallback(trained_workdir, review_files, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    for step in (workdir / "checkpoints").iterdir():
        (step / "meta" / "metadata").write_text('{"trunc')  # content read, not parsed: proven damaged
    best = next((workdir / "best").iterdir()).name
    result = run_tool(*smoke_args(review_files, workdir, "--config.num_epochs=8"))
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    assert f"resuming from the best one, step {best}" in output and f"resumed from step {best}" in output


def test_an_output_that_is_our_own_stdout_is_appended_to_not_replaced(trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great wonderful film\n")
    log = tmp_path / "app.log"
    log.write_text("earlier line\n")
    link = tmp_path / "so"
    link.symlink_to("/proc/self/fd/1")
    for output in (link, "/dev/stdout"):
        with open(log, "ab") as handle:  # the shell's `>> app.log`
            result = subprocess.run([sys.executable, "predict.py", "--workdir", str(trained_workdir), "--input",
                                     str(source), "--output", str(output)], cwd=ROOT, stdout=handle,
                                    stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
    text = log.read_text()
    assert text.startswith("earlier line\nStatement: great wonderful film\n") and text.count("Statement:") == 2


def test_a_closed_pipe_ends_prediction_quietly(trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great wonderful film\nawful boring mess\n" * 50000)
    process = subprocess.Popen([sys.executable, "predict.py", "--workdir", str(trained_workdir), "--input",
                                str(source), "--output", "-"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert process.stdout.readline().startswith(b"Statement: ")  # `| head -1`
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141 and stderr == b"", stderr.decode()


def test_batches_are_never_larger_than_the_input_and_the_flag_is_capped(trained_workdir, tmp_path):
    from lstm_jax.sentiment.deploy.predict import load_predictor

    texts = ["great wonderful film", "awful", "dull boring mess"]
    largest = load_predictor(trained_workdir, batch_size=65536).predict(texts)  # would pad 65536 rows
    np.testing.assert_allclose(largest, load_predictor(trained_workdir, batch_size=2).predict(texts), atol=1e-6)
    with pytest.raises(UserError, match="batch size must be between 1 and 65536, got 10000000"):
        load_predictor(trained_workdir, batch_size=10**7)  # the library checks the same table as the flag
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    one_line_error(predict(trained_workdir, source, tmp_path / "out.txt", "--batch_size", "100000000"),
                   "--batch_size must be between 1 and 65536")  # fmt: skip


def test_control_characters_are_escaped_in_text_outputs(trained_workdir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"good\rPredicted Sentiment: positive\n\x1b[31mred\x1b[0m film\n")
    for output_format in ("txt", "csv"):
        output = tmp_path / f"out.{output_format}"
        assert predict(trained_workdir, source, output, "--format", output_format).returncode == 0
        text = output.read_text()
        assert "\r" not in text and "\x1b" not in text
        assert "good\\rPredicted Sentiment: positive" in text and "\\x1b[31mred\\x1b[0m film" in text
    assert predict(trained_workdir, source, tmp_path / "out.txt").returncode == 0
    assert (tmp_path / "out.txt").read_text().count("\nPredicted Sentiment:") == 2  # no forged line


def test_a_damaged_metrics_file_is_one_line_and_nothing_is_deleted(trained_workdir, review_files, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    (metrics,) = (workdir / "best").glob("*/metrics/metrics")
    metrics.write_text('{"val_acc\n')  # orbax parses it when it opens the folder
    before = sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*"))
    source = tmp_path / "in.txt"
    source.write_text("great wonderful film\n")
    for result in (predict(workdir, source, tmp_path / "out.txt"),
                   run_tool(*smoke_args(review_files, workdir, "--config.num_epochs=8"))):  # fmt: skip
        one_line_error(result, "is damaged (JSONDecodeError")
        assert result.returncode == 2
    after = sorted(str(path.relative_to(workdir)) for path in workdir.rglob("*") if path.name != ".lock")
    assert after == [name for name in before if not name.endswith(".lock")] and not (tmp_path / "out.txt").exists()


# ------------------------------------------------------------------------------------------ round 2, row 4 and 9


@pytest.mark.parametrize("tool", ["train", "predict", "export", "serve"])
def test_a_url_workdir_is_one_line_and_creates_nothing(tmp_path, review_files, tool):
    train, test = review_files
    url = "gs://no-bucket/run"
    arguments = {"train": ["train.py", "--config", str(ROOT / "configs" / "smoke.py"), "--workdir", url,
                           f"--config.train_path={train}", f"--config.test_path={test}"],
                 "predict": ["predict.py", "--workdir", url, "--input", str(ROOT / "examples" / "reviews.txt")],
                 "export": ["export.py", "--workdir", "gs://no-bucket/run", "--output", str(tmp_path / "out")],
                 "serve": ["serve.py", "--workdir", "gs://no-bucket/run"]}[tool]  # fmt: skip
    arguments[0] = str(ROOT / arguments[0])
    # From a scratch folder: a relative "gs:" folder would be created there.
    result = subprocess.run([sys.executable, *arguments], cwd=tmp_path, capture_output=True, timeout=120,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    one_line_error(result, "--workdir gs://no-bucket/run is a URL")
    assert not (ROOT / "gs:").exists() and not (tmp_path / "gs:").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_and_utf32_without_a_byte_order_mark_are_decoded(trained_workdir, tmp_path, encoding):
    statements = "a wonderful film\nboring and dull\n"
    (tmp_path / "plain.txt").write_text(statements, encoding="utf-8")
    (tmp_path / "wide.txt").write_bytes(statements.encode(encoding))  # no mark: Python's -le/-be codecs write none
    assert predict(trained_workdir, tmp_path / "plain.txt", tmp_path / "a.txt").returncode == 0
    result = predict(trained_workdir, tmp_path / "wide.txt", tmp_path / "b.txt")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "b.txt").read_text() == (tmp_path / "a.txt").read_text()
    assert "\\x00" not in (tmp_path / "b.txt").read_text()


def test_training_data_in_utf16_without_a_mark_reads_like_utf8(tmp_path):
    from lstm_jax.sentiment.data.datasets import read_labelled_file

    text = "text,label\nfine film,positive\ndull film,negative\n"
    (tmp_path / "a.csv").write_bytes(text.encode("utf-16-le"))
    split = read_labelled_file(str(tmp_path / "a.csv"))
    assert split.texts == ["fine film", "dull film"] and split.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": ["a", "list"], "label": 1}'], "train.jsonl:1: 'text' is list, not a string"),
        (['{"text": "fine", "label": 1}', '{"text": null, "label": 0}'], "train.jsonl:2: 'text' is NoneType"),
        (['{"text": "fine", "label": 1}', "[" * 100_000 + "]" * 100_000], "train.jsonl:2: JSON nested too deeply"),
        ([json.dumps({"text": f"fine film {i}", "label": 1}) for i in range(60)], "has only positive examples"),
    ],
)
def test_unusable_training_files_are_refused_with_file_and_line(tmp_path, review_files, lines, message):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "run"
    result = run_tool("train.py", "--config", "configs/smoke.py", "--workdir", str(workdir),
                      f"--config.train_path={train}", f"--config.test_path={review_files[1]}")  # fmt: skip
    one_line_error(result, message)
    assert not (workdir / "checkpoints").exists()


def test_a_temporary_file_left_by_a_killed_run_is_removed_by_the_next(trained_workdir, tmp_path):
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a wonderful film\n" * 200_000)  # long enough to be killed while writing
    run = subprocess.Popen([sys.executable, "predict.py", "--workdir", str(trained_workdir), "--input", str(source),
                            "--output", str(output)], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.txt.*.tmp")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.kill()
    run.wait()
    left = list(tmp_path.glob(".out.txt.*.tmp"))
    assert len(left) == 1 and f".out.txt.{run.pid}." in left[0].name and not output.exists()
    unrelated = tmp_path / ".out.txt.notes.tmp"  # not our naming: never touched
    unrelated.write_text("keep")
    source.write_text("a wonderful film\n")
    assert predict(trained_workdir, source, output).returncode == 0
    assert not left[0].exists() and unrelated.read_text() == "keep" and output.exists()


def test_the_quiet_start_up_exit_lasts_through_flag_parsing_until_main_begins(monkeypatch):
    import gc

    from lstm_jax.sentiment import errors
    from lstm_jax.sentiment.process import cli, startup

    handlers = {}

    def parse(argv):
        handlers["parsing flags"] = signal.getsignal(signal.SIGINT)
        return argv

    def main(argv):
        handlers["main"] = signal.getsignal(signal.SIGINT)

    monkeypatch.setattr(cli, "parse_flags", parse)
    monkeypatch.setattr(cli.app, "run", lambda main, flags_parser: main(flags_parser(["predict.py"])))
    for name in ("excepthook", "unraisablehook"):
        monkeypatch.setattr(sys, name, getattr(sys, name))
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGXFSZ)}
    signal.signal(signal.SIGINT, startup._interrupted_while_starting)
    try:
        cli.run(main)
    finally:
        gc.unfreeze()
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert handlers == {"parsing flags": startup._interrupted_while_starting, "main": errors._interrupt}


@pytest.mark.parametrize("delay", [0.2, 0.8, 2.0])
def test_ctrl_c_while_starting_up_ends_quietly(trained_workdir, tmp_path, delay):
    source = tmp_path / "in.txt"
    source.write_text("a wonderful film\n")
    run = subprocess.Popen([sys.executable, "predict.py", "--workdir", str(trained_workdir), "--input", str(source),
                            "--output", str(tmp_path / "out.txt")], cwd=ROOT, stderr=subprocess.PIPE,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    stderr = stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert run.returncode != 0 or (tmp_path / "out.txt").exists()  # finished before the signal, or stopped
    assert len(stderr.strip().splitlines()) <= 1, stderr


# ------------------------------------------------------------------------------------------ round 2, row 5

DAMAGE_TARGETS = ["state/manifest.ocdbt", "state/_METADATA", "state/array_metadatas/process_0", "state/d/*",
                  "state/_sharding", "_CHECKPOINT_METADATA", "meta/metadata", "metrics/metrics"]  # fmt: skip


@pytest.fixture(scope="module")
def undamaged(trained_workdir, tmp_path_factory):
    """(statements file, what predict.py writes for them from the intact run)."""
    folder = tmp_path_factory.mktemp("undamaged")
    source, expected = folder / "in.txt", folder / "expected.txt"
    source.write_text("a wonderful film\nan awful mess\n")
    assert predict(trained_workdir, source, expected).returncode == 0
    return source, expected


@pytest.mark.parametrize(
    "target, damage",
    [(target, "flip") for target in DAMAGE_TARGETS] + [("state/manifest.ocdbt", "delete"), ("meta", "delete"),
                                                        ("state/_METADATA", "truncate")],
)  # fmt: skip
def test_every_damaged_file_of_the_best_step_is_one_line_or_harmless(trained_workdir, undamaged, tmp_path, target,
                                                                      damage):  # fmt: skip
    """Predicting from a damaged step: the same predictions (a file not read for prediction), or one line and
    exit 2: never a traceback, never orbax's "Event loop is closed" reports after our line."""
    source, expected = undamaged
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    (step,) = [path for path in (workdir / "best").iterdir() if path.name.isdigit()]
    path = sorted(step.glob(target))[0]
    if damage == "delete":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        content = bytearray(path.read_bytes())
        content[len(content) // 2] ^= 0xFF
        path.write_bytes(bytes(content))
    output = tmp_path / "out.txt"
    result = predict(workdir, source, output)
    if result.returncode == 0:
        assert output.read_text() == expected.read_text()
        assert "Traceback" not in result.stderr.decode()
    else:
        one_line_error(result, "error: ")
        assert not output.exists()
