"""The benchmark's machinery on a tiny case (its numbers are never asserted: machines are noisy)."""

import math

from lstm_jax.sentiment import bench

TINY = dict(vocab=50, embed=4, hidden=4, batch=4, time=6)


def test_every_implementation_runs_and_reports(tmp_path):
    bench.DEFAULT_TORCH_THREADS = 1
    full = bench.implementations("lstm", TINY, quick=False)
    assert {"lstm_jax fused", "lstm_jax scan u16", "lstm_jax python loop", "flax nn.RNN", "torch eager"} <= set(full)
    for workload, quick in (("train", False), ("infer", True)):
        impls = bench.implementations("lstm", TINY, quick=quick)
        records = bench.measure_case(workload, "tiny", TINY, "lstm", impls, repetitions=2, seconds=0.01)
        assert {r["implementation"] for r in records} == set(impls)
        for record in records:
            assert record["examples_per_second"] > 0 and len(record["step_seconds"]) == 2
            assert math.isclose(next(r for r in records if r["implementation"] == "torch eager")["ratio_vs_torch"], 1.0)
            if record["implementation"].startswith("lstm_jax"):
                assert record["compile_seconds"] > 0
    paths = bench.plots(records, tmp_path, "tiny")
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "| infer | tiny | lstm | lstm_jax fused |" in bench.table(records)


def test_gru_and_bidirectional_peers_build():
    for cell in ("gru", "bilstm", "peephole_lstm"):
        impls = bench.implementations(cell, TINY, quick=True)
        bench.measure_case("infer", "tiny", TINY, cell, impls, repetitions=1, seconds=0.01)
