"""export.py and predict.py never delete or overwrite what they did not write (issue 40, items 1-3 and 12)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import lstm_jax.deploy as deploy
from lstm_jax.sentiment import errors, files
from lstm_jax.sentiment.deploy.export import export_model

pytest.importorskip("onnxruntime")

ENVIRONMENT = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _export(*args, cwd=ROOT, wait=True):
    command = [sys.executable, str(ROOT / "export.py"), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=ENVIRONMENT, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)


def _one_line(result, fragment):
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr


def _contents(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def runs(trained_workdir, tmp_path):
    """runs/a: a copy of a trained work directory (the old export.py deleted what these tests point it at)."""
    shutil.copytree(trained_workdir, tmp_path / "runs" / "a")
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "metrics.jsonl").write_text("{}\n")
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    return export_model(trained_workdir, tmp_path_factory.mktemp("exported") / "model", ["onnx"])


@pytest.mark.parametrize("where", ["a", ".", "a/best", "a/../a/exported"])
def test_force_never_exports_over_around_or_into_the_workdir(runs, where):
    before = _contents(runs)
    _one_line(_export("--workdir", runs / "a", "--output", runs / where, "--format", "onnx", "--force"),
              "the work directory")  # fmt: skip
    assert _contents(runs) == before and sorted(os.listdir(runs)) == ["a", "b"]


def test_force_replaces_an_earlier_export_only(runs, exported, tmp_path):
    before = _contents(runs)
    _one_line(_export("--workdir", runs / "a", "--output", runs / "b", "--format", "onnx", "--force"),
              "that export.py did not write")  # fmt: skip
    assert _contents(runs) == before
    (runs / "c").mkdir()
    (runs / "c" / "manifest.json").write_text("my own manifest, not an export's")
    _one_line(_export("--workdir", runs / "a", "--output", runs / "c", "--format", "onnx", "--force"),
              "that export.py did not write")  # fmt: skip
    assert (runs / "c" / "manifest.json").read_text() == "my own manifest, not an export's"
    earlier = shutil.copytree(exported, tmp_path / "earlier")
    result = _export("--workdir", runs / "a", "--output", earlier, "--format", "onnx", "--force", "--threshold", "0.7")
    assert result.returncode == 0, result.stderr
    assert deploy.load(earlier).threshold == 0.7 and sorted(os.listdir(tmp_path)) == ["earlier", "runs"]


def _wait_for_staging(parent, name, process):
    deadline = time.monotonic() + 240
    while not list(parent.glob(f".{name}.*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.005)


def test_a_folder_that_appears_while_exporting_is_left_alone(runs, tmp_path):
    output = tmp_path / "model"
    process = _export("--workdir", runs / "a", "--output", output, "--format", "stablehlo", wait=False)
    _wait_for_staging(tmp_path, "model", process)
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    _, stderr = process.communicate(timeout=300)
    _one_line(subprocess.CompletedProcess([], process.returncode, "", stderr), "appeared while exporting")
    assert _contents(output) == {"notes.txt": b"mine"} and sorted(os.listdir(tmp_path)) == ["model", "runs"]


def test_of_two_exports_to_one_new_folder_exactly_one_wins(runs, tmp_path):
    output = tmp_path / "model"
    processes = [_export("--workdir", runs / "a", "--output", output, "--format", "onnx", wait=False)
                 for _ in range(2)]  # fmt: skip
    results = [subprocess.CompletedProcess([], process.wait(300), "", process.stderr.read()) for process in processes]
    assert sorted(result.returncode for result in results) == [0, 2], [result.stderr for result in results]
    loser = next(result for result in results if result.returncode)
    _one_line(loser, "appeared while exporting" if "appeared" in loser.stderr else "exists and is not empty")
    assert deploy.load(output).format == "onnx" and sorted(os.listdir(tmp_path)) == ["model", "runs"]


@pytest.mark.parametrize("swap", ["renameat2", "two renames"])
def test_sigterm_during_the_force_swap_leaves_an_export_in_place(trained_workdir, exported, tmp_path, monkeypatch,
                                                                 swap):  # fmt: skip
    output = shutil.copytree(exported, tmp_path / "model")
    renameat2, rename = getattr(files, "_renameat2", None), os.rename

    def then_sigterm(function):
        def call(*args):
            result = function(*args)
            os.kill(os.getpid(), signal.SIGTERM)
            return result

        return call

    if swap == "renameat2":
        monkeypatch.setattr(files, "_renameat2", then_sigterm(renameat2), raising=False)
    else:
        monkeypatch.setattr(files, "_renameat2", lambda *args: False, raising=False)
        monkeypatch.setattr(os, "rename", then_sigterm(rename))
    previous = signal.getsignal(signal.SIGTERM)
    errors.interrupt_on_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt):
            export_model(trained_workdir, output, ["onnx"], force=True, threshold=0.25)
    finally:
        signal.signal(signal.SIGTERM, previous)
        errors._interrupted.clear()
    monkeypatch.undo()
    assert deploy.load(output).threshold in (0.25, 0.5)  # the new export or the old one, never none
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_output_dot_exports_into_the_empty_current_folder_and_leaves_nothing_else(runs, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    result = _export("--workdir", runs / "a", "--output", ".", "--format", "onnx", cwd=here)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(here)) == ["manifest.json", "model.onnx", "vocabulary.json"]
    assert sorted(os.listdir(tmp_path)) == ["here", "runs"]


def _predict(*args):
    return subprocess.run([sys.executable, "predict.py", *map(str, args)], cwd=ROOT, env=ENVIRONMENT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("inside", ["manifest.json", "vocabulary.json", "new.txt"])
def test_predict_never_writes_inside_the_model_it_reads(exported, tmp_path, inside):
    (tmp_path / "in.txt").write_text("great film\n")
    before = _contents(exported)
    _one_line(_predict("--model", exported, "--input", tmp_path / "in.txt", "--output", exported / inside),
              "which this command reads")  # fmt: skip
    assert _contents(exported) == before


def test_predict_never_writes_inside_the_workdir_it_reads(runs, tmp_path):
    (tmp_path / "in.txt").write_text("great film\n")
    workdir = runs / "a"
    step = next(path for path in (workdir / "best").iterdir() if path.name.isdigit())
    link = tmp_path / "link"
    link.symlink_to(step)
    before = _contents(workdir)
    for output in (step / "predictions.txt", link / "predictions.txt"):
        _one_line(_predict("--workdir", workdir, "--input", tmp_path / "in.txt", "--output", output),
                  "which this command reads")  # fmt: skip
    assert _contents(workdir) == before


def test_sigterm_as_the_staging_folder_appears_leaves_the_old_export_and_nothing_else(runs, exported, tmp_path):
    output = shutil.copytree(exported, tmp_path / "model")
    before = _contents(output)
    process = _export("--workdir", runs / "a", "--output", output, "--format", "onnx", "--force", "--threshold", "0.3",
                      wait=False)  # fmt: skip
    _wait_for_staging(tmp_path, "model", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 130), stderr
    assert sorted(os.listdir(tmp_path)) == ["model", "runs"]
    assert _contents(output) == before or deploy.load(output).threshold == 0.3


def test_sigterm_while_the_staging_folder_is_made_leaves_nothing(trained_workdir, tmp_path, monkeypatch):
    import tempfile

    make = tempfile.mkdtemp

    def make_then_sigterm(*args, **kwargs):
        folder = make(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", make_then_sigterm)
    previous = signal.getsignal(signal.SIGTERM)
    errors.interrupt_on_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt):
            export_model(trained_workdir, tmp_path / "model", ["onnx"])
    finally:
        signal.signal(signal.SIGTERM, previous)
        errors._interrupted.clear()
    assert os.listdir(tmp_path) == []


def test_a_deeply_nested_manifest_in_the_target_is_kept_with_one_line(runs):
    (runs / "c").mkdir()
    (runs / "c" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    _one_line(_export("--workdir", runs / "a", "--output", runs / "c", "--format", "onnx", "--force"),
              "that export.py did not write")  # fmt: skip
    assert (runs / "c" / "manifest.json").stat().st_size == 200_000


def test_a_format_named_twice_is_written_once_and_loads(trained_workdir, tmp_path):
    output = export_model(trained_workdir, tmp_path / "model", ["onnx", "onnx"])
    assert deploy.load(output).format == "onnx"


def test_a_check_that_fails_after_the_swap_puts_the_folder_back(tmp_path):
    staging, output = tmp_path / "staging", tmp_path / "output"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    output.mkdir()
    (output / "mine.txt").write_text("a user's file")

    def failing_check(_):
        raise OSError("cannot read the folder")

    with pytest.raises(OSError):
        files.publish_folder(staging, output, replaceable=failing_check)
    assert (output / "mine.txt").read_text() == "a user's file" and (staging / "new.txt").read_text() == "new"
