"""Start-up mistakes of train.py and export.py are one line and exit code 2 (issue 40, item 11)."""

import subprocess
import sys

import pytest
from conftest import ROOT

HIDE_AND_RUN = "import runpy, sys; sys.modules[{package!r}] = None; sys.argv = {argv!r}; " \
               "runpy.run_path({script!r}, run_name='__main__')"  # fmt: skip


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _one_line(result, fragment):
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr


@pytest.mark.parametrize("package, model_format", [("flatbuffers", "stablehlo"), ("onnx", "onnx")])
def test_export_without_its_extra_names_the_extra(trained_workdir, tmp_path, package, model_format):
    argv = ["export.py", "--workdir", str(trained_workdir), "--output", str(tmp_path / "out"), "--format", model_format]
    code = HIDE_AND_RUN.format(package=package, argv=argv, script=str(ROOT / "export.py"))
    _one_line(_run("-c", code), f"needs the {package} package: pip install 'lstm_jax[export]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "config, source, fragment",
    [
        ("configs/smok.py", None, "config file configs/smok.py does not exist"),
        ("bad.py", "def get_config(:\n", "has a syntax error at line 1"),
        ("raises.py", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ],
)
def test_a_config_file_that_does_not_load_is_one_line_even_with_overrides(tmp_path, config, source, fragment):
    if source is not None:
        config = tmp_path / config
        config.write_text(source)
    for overrides in ([], ["--config.num_epochs=1", "--config.batch_size=4"]):
        _one_line(_run("train.py", "--config", config, "--workdir", tmp_path / "run", *overrides), fragment)


def test_word_vectors_from_a_device_or_an_endless_line_are_refused(review_files, tmp_path):
    train, test = review_files
    endless = tmp_path / "vectors.txt"
    with open(endless, "wb") as handle:
        handle.write(b"film 0.1 0.2 0.3\n" + b"0" * (3 << 20))
    common = ["train.py", "--config", "configs/smoke.py", "--workdir", tmp_path / "run", f"--config.train_path={train}",
              f"--config.test_path={test}", "--config.embedding_init=file", "--config.embedding_dim=3"]  # fmt: skip
    _one_line(_run(*common, "--config.embedding_path=/dev/zero", timeout=120), "is not a regular file")
    _one_line(_run(*common, f"--config.embedding_path={endless}", timeout=120), "is longer than 1048576 bytes")
