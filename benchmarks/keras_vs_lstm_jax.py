"""Whole-process wall time and test accuracy: the tutorial's Keras program against lstm_jax's seed job.

python benchmarks/keras_vs_lstm_jax.py [--repetitions 3] [--out FILE.json]  (default: a new folder under ./bench-runs)

Each repetition runs, in rotated order, as separate processes on the same data (Rotten Tomatoes, cached):
the Keras 3 program (JAX backend, benchmarks/keras_tutorial.py); lstm_jax with its compilation cache warm
(the usual case from the second run on); lstm_jax with an empty compilation cache (a first run). Every
lstm_jax run trains from scratch in a new work directory. One untimed warm-up of each fills the OS file
cache first. Reports the median wall time (start of the process to its exit) and the test accuracy.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    accuracy = float(re.findall(r"Accuracy: ([\d.]+)%", result.stdout)[-1])
    return seconds, accuracy


def programs(scratch: Path) -> dict:
    warm_cache = scratch / "jax-cache"
    counter = iter(range(10_000))

    def lstm_jax(cache):
        def command():
            run_id = next(counter)
            cache_dir = cache if cache else scratch / f"cold-cache-{run_id}"
            workdir = scratch / f"run{run_id}"
            return [sys.executable, "train.py", "--config", "configs/seed.py", "--workdir", str(workdir),
                    f"--config.compilation_cache_dir={cache_dir}"]  # fmt: skip

        return command

    return {
        "keras 3 (jax backend), tutorial program": lambda: [sys.executable, "benchmarks/keras_tutorial.py", "--out",
                                                            str(scratch / "keras_model.keras")],  # fmt: skip
        "lstm_jax train.py, compilation cache warm": lstm_jax(warm_cache),
        "lstm_jax train.py, compilation cache empty": lstm_jax(None),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file (default: a new folder under ./bench-runs; "
                        "benchmarks/results/keras-vs-lstm_jax.json is the committed one)")
    args = parser.parse_args()
    machine_before = machine.describe()
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "keras_vs_lstm_jax") / "result.json"
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as scratch:
        commands = programs(Path(scratch))
        names = list(commands)
        for name in names:  # warm-up: data in the OS cache, lstm_jax's compilation cache filled
            run(commands[name](), env)
        results = {name: {"seconds": [], "accuracy": []} for name in names}
        for repetition in range(args.repetitions):
            for name in names[repetition % len(names):] + names[: repetition % len(names)]:
                seconds, accuracy = run(commands[name](), env)
                results[name]["seconds"].append(seconds)
                results[name]["accuracy"].append(accuracy)
                print(f"{name}: {seconds:.1f} s, test accuracy {accuracy:.2f}%", flush=True)
    keras_name = names[0]
    keras_median = statistics.median(results[keras_name]["seconds"])
    print("\n| program | median wall (s) | runs (s) | test accuracy (%) | speed-up over Keras |")
    print("|---|---:|---|---|---:|")
    for name in names:
        median = statistics.median(results[name]["seconds"])
        results[name].update(median_seconds=median, speedup_over_keras=keras_median / median)
        runs = ", ".join(f"{s:.1f}" for s in results[name]["seconds"])
        accuracies = ", ".join(f"{a:.2f}" for a in results[name]["accuracy"])
        print(f"| {name} | {median:.1f} | {runs} | {accuracies} | {keras_median / median:.2f}× |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "cpu_count": os.cpu_count(), "results": results,
                               "machine_before": machine_before, "machine_after": machine.describe()}, indent=1))


if __name__ == "__main__":
    main()
