"""Data-parallel training across processes, through JAX's own engine: two CPU processes on localhost
(``jax.distributed`` with gloo collectives) against one process with two devices and the same global batch."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, load_config
from test_job import run_tool, smoke_args, tiny_state

from lstm_jax.sentiment import checkpoints as ckpt

EXTRA = ["--config.num_epochs=1", "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=100",
         "--config.test_checkpoint=last"]  # fmt: skip
TOLERANCE = 1e-6  # the same arithmetic; only the all-reduce's transport differs (gloo between processes)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def run_processes(review_files, workdir, *extra, per_process=(), count=2):
    """Starts ``count`` train.py processes of one run; returns their CompletedProcess-like results."""
    port = free_port()
    processes = []
    for index in range(count):
        args = smoke_args(review_files, workdir, *EXTRA, *extra, *(per_process[index] if per_process else ()),
                          f"--config.coordinator_address=localhost:{port}", f"--config.num_processes={count}",
                          f"--config.process_id={index}")  # fmt: skip
        processes.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"}))
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def per_step_losses(workdir, vocab_size):
    """The loss of every step, from the running sums saved at every step: {step: loss}."""
    run = ckpt.Checkpoints(workdir, read_only=True)
    like = tiny_state(load_config(), vocab_size=vocab_size)
    sums = {step: run.restore(step, like) for step in run.latest.all_steps()}
    losses = {}
    for step, state in sums.items():
        previous = sums.get(step - 1)
        same_epoch = previous is not None and int(previous.epoch) == int(state.epoch) and int(state.batch) > 0
        losses[step] = float(state.sums["loss"]) - (float(previous.sums["loss"]) if same_epoch else 0.0)
    return losses, sums[max(sums)]


def epochs(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "epoch_seconds"} for line in lines]


def test_two_processes_train_like_one_process_and_a_laptop_resumes_and_predicts(review_files, tmp_path):
    two = run_processes(review_files, tmp_path / "two")
    for result in two:
        assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert b"2 device(s)" in two[0].stdout and b"Accuracy" not in two[1].stdout  # one process reports
    one = run_tool(*smoke_args(review_files, tmp_path / "one", *EXTRA),
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})  # fmt: skip
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    assert epochs(tmp_path / "two") == epochs(tmp_path / "one")

    vocab_size = ckpt.Checkpoints(tmp_path / "one", read_only=True).read_meta(8)["sizes"]["vocab_size"]
    two_losses, two_final = per_step_losses(tmp_path / "two", vocab_size)
    one_losses, one_final = per_step_losses(tmp_path / "one", vocab_size)
    assert sorted(two_losses) == sorted(one_losses) == list(range(1, 9))  # written once per step, not per process
    worst = max(abs(two_losses[s] - one_losses[s]) for s in one_losses)
    print(f"max per-step loss difference, 2 processes vs 1: {worst:.3g}")
    assert worst <= TOLERANCE, worst
    for name, leaf in ckpt.named_leaves(one_final.params).items():
        np.testing.assert_allclose(ckpt.named_leaves(two_final.params)[name], leaf, atol=TOLERANCE, err_msg=name)

    # The cluster's checkpoint resumes on two processes, then on one process with one device.
    longer = run_processes(review_files, tmp_path / "two", "--config.num_epochs=2")
    assert all(r.returncode == 0 for r in longer) and b"resumed from step 8" in longer[0].stdout
    laptop = run_tool(*smoke_args(review_files, tmp_path / "two", *EXTRA, "--config.num_epochs=3"))
    assert laptop.returncode == 0 and b"resumed from step 16" in laptop.stdout, laptop.stderr.decode()[-3000:]
    source = tmp_path / "in.txt"
    source.write_text("a wonderful film\nan awful mess\n")
    predicted = run_tool("predict.py", "--workdir", str(tmp_path / "two"), "--input", str(source), "--output",
                         str(tmp_path / "p.txt"))  # fmt: skip
    assert predicted.returncode == 0 and (tmp_path / "p.txt").read_text().count("-----") == 2


def test_processes_with_different_settings_stop_with_one_line(review_files, tmp_path):
    results = run_processes(review_files, tmp_path / "mixed",
                            per_process=[["--config.hidden_size=8"], ["--config.hidden_size=16"]])  # fmt: skip
    for result in results:
        stderr = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr.decode(), stderr
        assert [line for line in stderr if line.startswith("error:")] == [
            "error: the processes of this run were started with different settings; start every process with the "
            "same config and flags (only --config.process_id differs)"
        ]


SHARE_CHECK = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from lstm_jax.sentiment import batching
mesh = Mesh(np.array(jax.devices()), ("data",))
examples = {"tokens": np.arange(40, dtype=np.int32).reshape(8, 5), "lengths": np.full(8, 5, np.int32)}
order = jax.device_put(np.array([[7, 6, 5, 4, 3, 2, 1, 0]], np.int32), NamedSharding(mesh, P(None, "data")))
batch = jax.jit(lambda o: batching.take_batch(jax.tree.map(jax.numpy.asarray, examples), o[0], 5))(order)
print(sorted((s.index[0].start or 0, np.asarray(s.data)[:, 0].tolist()) for s in batch["tokens"].addressable_shards))
"""


def test_each_device_gathers_only_its_share_of_a_batch():
    result = run_tool("-c", SHARE_CHECK, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    # Device 0 holds rows 0-3 of the batch (examples 7..4), device 1 rows 4-7 (examples 3..0), nothing more.
    assert result.stdout.decode().strip() == "[(0, [35, 30, 25, 20]), (4, [15, 10, 5, 0])]"


def _alone(review_files, tmp_path, *flags, timeout=60):
    """One train.py process of a multi-process run; returns (result, seconds)."""
    started = time.monotonic()
    command = [sys.executable, *smoke_args(review_files, tmp_path / "run", *flags)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    return result, time.monotonic() - started


def _lines(result):
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and "@ " not in stderr, stderr  # no Python or C++ stack
    return [line for line in stderr.strip().splitlines() if line]


def test_a_missing_peer_is_named_at_the_timeout_in_one_line(review_files, tmp_path):
    port = free_port()
    result, seconds = _alone(review_files, tmp_path, f"--config.coordinator_address=127.0.0.1:{port}",
                             "--config.num_processes=3", "--config.process_id=0",
                             "--config.initialization_timeout=4")  # fmt: skip
    lines = _lines(result)
    assert result.returncode == 2 and seconds < 30
    assert lines[0] == (f"process 0 of 3: waiting up to 4 s at 127.0.0.1:{port} for processes 1-2 "
                        "(--config.initialization_timeout)")  # fmt: skip
    assert lines[1:] == [f"error: process 0: process(es) 1, 2 of 3 did not join within 4 s at 127.0.0.1:{port}; start "
                         "them with the same flags and their --config.process_id, or raise "
                         "--config.initialization_timeout"]  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_coordinator_is_named_at_the_timeout_in_one_line(review_files, tmp_path):
    port = free_port()
    result, seconds = _alone(review_files, tmp_path, f"--config.coordinator_address=127.0.0.1:{port}",
                             "--config.num_processes=2", "--config.process_id=1",
                             "--config.initialization_timeout=3")  # fmt: skip
    lines = _lines(result)
    assert result.returncode == 2 and seconds < 30 and lines[0].startswith("process 1 of 2: waiting up to 3 s")
    assert lines[1:] == [f"error: process 1: process 0 did not answer at 127.0.0.1:{port} within 3 s; start it "
                         "(--config.process_id=0) on that machine, or check the address"]  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.coordinator_address=127.0.0.1", "--config.num_processes=2", "--config.process_id=0"],
         "must be HOST:PORT with a port from 1 to 65535"),
        (["--config.coordinator_address=127.0.0.1:99999", "--config.num_processes=2", "--config.process_id=0"],
         "must be HOST:PORT"),
        (["--config.coordinator_address=no-such-host.invalid:1234", "--config.num_processes=2",
          "--config.process_id=1"], "host 'no-such-host.invalid' is unknown"),
        (["--config.distributed=true"], "cannot join a multi-process run"),
    ],
)  # fmt: skip
def test_bad_addresses_are_refused_before_waiting(review_files, tmp_path, flags, message):
    result, seconds = _alone(review_files, tmp_path, *flags)
    lines = _lines(result)
    assert result.returncode == 2 and seconds < 30 and len(lines) == 1 and message in lines[0], lines
