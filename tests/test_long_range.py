"""The long-range lab (benchmarks/long_range.py): its task generators, the gradient-flow measurement through the
public API, and a tiny end-to-end run."""

import importlib.util
import json

import jax
import numpy as np
import pytest
from conftest import ROOT

pytestmark = pytest.mark.lab  # a benchmark script's tests: python -m pytest -m lab

spec = importlib.util.spec_from_file_location("long_range", ROOT / "benchmarks" / "long_range.py")
long_range = importlib.util.module_from_spec(spec)
spec.loader.exec_module(long_range)


def test_the_adding_problem_marks_one_step_in_each_half_and_sums_them():
    x, y = long_range.adding_problem(jax.random.key(0), 64, 21)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (64, 21, 2) and y.shape == (64,)
    markers = x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0} and np.all(markers.sum(axis=1) == 2)
    assert np.all(markers[:, :10].sum(axis=1) == 1) and np.all(markers[:, 10:].sum(axis=1) == 1)
    np.testing.assert_allclose(y, (x[..., 0] * markers).sum(axis=1), rtol=1e-6)
    assert np.all((x[..., 0] >= 0) & (x[..., 0] < 1))


def test_copy_memory_layout():
    gap, k = 7, long_range.COPY_LENGTH
    x, y = long_range.copy_memory(jax.random.key(1), 16, gap)
    tokens = np.argmax(np.asarray(x), axis=-1)
    assert x.shape == (16, k + gap + k, long_range.COPY_SYMBOLS + 2) and y.shape == (16, k)
    np.testing.assert_array_equal(tokens[:, :k], y)  # the symbols first
    assert np.all((y >= 1) & (y <= long_range.COPY_SYMBOLS))
    assert np.all(tokens[:, k : k + gap - 1] == 0)  # blanks
    assert np.all(tokens[:, k + gap - 1] == long_range.COPY_SYMBOLS + 1)  # the cue
    assert np.all(tokens[:, k + gap :] == 0)  # blanks while recalling


def test_the_plain_rnns_gradient_dies_with_distance_and_the_lstms_does_not():
    ratio = {}
    for cell in ("simple_rnn", "lstm"):
        profile = long_range.gradient_profile("adding", long_range.make_model("adding", cell, 0), 60)
        assert len(profile) == 60 and all(np.isfinite(profile))
        ratio[cell] = profile[39] / profile[0]  # distance 40 against distance 1
    assert ratio["simple_rnn"] < 1e-3  # measured 1.5e-4
    assert ratio["lstm"] > 5e-3 and ratio["lstm"] > 30 * ratio["simple_rnn"]  # measured 1.7e-2


def test_a_tiny_run_writes_its_json_table_and_pictures(tmp_path, capsys):
    result = long_range.main(["--out", str(tmp_path), "--cells", "simple_rnn,lstm", "--lengths", "8",
                              "--seeds", "0", "--max-steps", "3", "--copy-max-steps", "2", "--profile-length", "8",
                              "--workers", "1"])  # fmt: skip
    saved = json.loads((tmp_path / "long_range.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert {(r["task"], r["cell"]) for r in saved["records"]} == {
        (task, cell) for task in ("adding", "copy") for cell in ("simple_rnn", "lstm")
    }
    assert all(r["steps_run"] == (3 if r["task"] == "adding" else 2) for r in saved["records"])
    profiled = [r for r in saved["records"] if "gradient_at_init" in r]
    assert len(profiled) == 2 and all(len(r["gradient_after_training"]) == 8 for r in profiled)
    assert (tmp_path / "long_range_tasks.png").stat().st_size > 1000
    assert (tmp_path / "long_range_gradients.png").stat().st_size > 1000
    assert "| adding | 8 | lstm |" in capsys.readouterr().out
