"""Why the LSTM exists, measured: long-range tasks and gradient flow for every cell lstm_jax ships.

python benchmarks/long_range.py [--quick] [--out DIR] [--cells lstm,gru] [--lengths 50,100] [--seeds 0,1]

Part 1 trains each cell on two synthetic tasks from the LSTM literature, generated on the fly from a seed:

* the adding problem (Hochreiter & Schmidhuber 1997): T steps of (value in [0, 1], marker); exactly two steps
  are marked, one in each half; the target is the sum of the two marked values. Test MSE against 0.167, what
  always predicting 1 scores; solved = test MSE < 0.01;
* copy memory (Arjovsky et al. 2016): K = 10 symbols from 8, then T - 1 blanks, a cue, and K blanks during
  which the symbols must be reproduced. Accuracy on the recalled symbols against chance (1/8); solved =
  accuracy >= 0.95.

Each run trains at most ``--max-steps`` (adding; 2,000) or ``--copy-max-steps`` (copy; 1,000) Adam steps
(batch 64, hidden size 32, learning rate 3e-3, global-norm clipping 1),
tests every 100 steps on 1,000 fresh sequences, and stops once solved. Cells: simple RNN, LSTM, peephole LSTM,
GRU, and the LSTM with its forget-gate bias at 0 instead of 1 (Gers et al. 2000; Jozefowicz et al. 2015).

Part 2, gradient flow: for each cell on the adding problem, the norm of d loss / d x_t against the distance
T - t, averaged over a batch of 256, at initialisation and after the part-1 training (seed 0): the plain RNN's
gradient dies geometrically with distance; the gated cells carry it across the sequence.

Outputs in --out (default: a new folder under ./bench-runs; benchmarks/results holds the committed ones):
long_range.json (every figure, settings, seeds, versions, device), long_range_tasks.png,
long_range_gradients.png, and a printed markdown table. Runs are spread over ``--workers`` processes (default:
one per core; XLA runs each recurrence on one core).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

CELLS = {  # name in the results -> (lstm_jax cell, cell keyword arguments)
    "simple_rnn": ("simple_rnn", {}),
    "lstm": ("lstm", {}),
    "lstm_forget_bias_0": ("lstm", {"forget_bias": 0.0}),
    "peephole_lstm": ("peephole_lstm", {}),
    "gru": ("gru", {}),
    "slstm": ("slstm", {}),  # xLSTM (Beck et al. 2024), one head
    "mlstm": ("mlstm", {}),
}
HIDDEN, BATCH, LEARNING_RATE, TEST_SIZE, EVAL_EVERY = 32, 64, 3e-3, 1000, 100
COPY_SYMBOLS, COPY_LENGTH = 8, 10  # symbols 1..8; 0 is the blank, 9 the cue
SOLVED = {"adding": ("mse", lambda mse: mse < 0.01), "copy": ("accuracy", lambda accuracy: accuracy >= 0.95)}
BASELINE = {"adding": 1 / 6, "copy": 1 / COPY_SYMBOLS}  # always predicting 1; guessing a symbol


# ------------------------------------------------------------------------------------------ tasks


def adding_problem(key, batch: int, length: int):
    """x <float32>[batch, length, 2] (value, marker), y <float32>[batch]: the sum of the two marked values."""
    import jax
    import jax.numpy as jnp

    values_key, first_key, second_key = jax.random.split(key, 3)
    values = jax.random.uniform(values_key, (batch, length))
    first = jax.random.randint(first_key, (batch,), 0, length // 2)
    second = jax.random.randint(second_key, (batch,), length // 2, length)
    markers = jax.nn.one_hot(first, length) + jax.nn.one_hot(second, length)
    return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=1)


def copy_memory(key, batch: int, gap: int):
    """x <float32>[batch, K + gap + K, 10] one-hot, y <int32>[batch, K]: the first K symbols, to be
    reproduced at the last K steps (after gap - 1 blanks and a cue)."""
    import jax
    import jax.numpy as jnp

    symbols = jax.random.randint(key, (batch, COPY_LENGTH), 1, COPY_SYMBOLS + 1)
    blanks = jnp.zeros((batch, gap - 1), jnp.int32)
    cue = jnp.full((batch, 1), COPY_SYMBOLS + 1, jnp.int32)
    sequence = jnp.concatenate([symbols, blanks, cue, jnp.zeros((batch, COPY_LENGTH), jnp.int32)], axis=1)
    return jax.nn.one_hot(sequence, COPY_SYMBOLS + 2), symbols


# ------------------------------------------------------------------------------------------ models


def make_model(task: str, cell: str, seed: int):
    from flax import nnx

    import lstm_jax

    cell_name, cell_kwargs = CELLS[cell]

    class Model(nnx.Module):
        def __init__(self, rngs):
            features = 2 if task == "adding" else COPY_SYMBOLS + 2
            self.rnn = lstm_jax.make_recurrent(cell_name, features, HIDDEN, rngs=rngs, **cell_kwargs)
            self.head = nnx.Linear(HIDDEN, 1 if task == "adding" else COPY_SYMBOLS + 1, rngs=rngs)

        def __call__(self, x):
            outputs, _ = self.rnn(x)
            if task == "adding":
                return self.head(outputs[:, -1])[:, 0]
            return self.head(outputs[:, -COPY_LENGTH:])  # logits over blank + 8 symbols at the recall steps

    return Model(nnx.Rngs(seed))


def loss_and_metric(task: str, model, x, y):
    import jax.numpy as jnp
    import optax

    predictions = model(x)
    if task == "adding":
        mse = jnp.mean((predictions - y) ** 2)
        return mse, mse
    loss = optax.softmax_cross_entropy_with_integer_labels(predictions, y).mean()
    return loss, jnp.mean(jnp.argmax(predictions, axis=-1) == y)


def gradient_profile(task: str, model, length: int, seed: int = 12345) -> list[float]:
    """Mean over a batch of ||d loss / d x_t||, listed by distance T - t = 1 ... T (task: adding)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    x, y = adding_problem(jax.random.key(seed), 256, length)
    graphdef, params = nnx.split(model)

    def loss(x):
        return loss_and_metric(task, nnx.merge(graphdef, params), x, y)[0]

    grads = jax.grad(loss)(x)  # [batch, T, features]
    per_step = jnp.mean(jnp.linalg.norm(grads, axis=-1), axis=0)  # [T]
    return [float(v) for v in per_step[::-1]]  # distance 1 (the last step) first


# ------------------------------------------------------------------------------------------ one run


def train_run(task: str, cell: str, length: int, seed: int, max_steps: int, profile: bool = False) -> dict:
    """Trains one cell on one task and length; returns its record (and gradient profiles when asked)."""
    import jax
    import optax
    from flax import nnx

    generate = adding_problem if task == "adding" else copy_memory
    model = make_model(task, cell, seed)
    before = gradient_profile(task, model, length) if profile else None
    optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LEARNING_RATE)),
                              wrt=nnx.Param)  # fmt: skip
    test_x, test_y = generate(jax.random.key(10_000 + seed), TEST_SIZE, length)

    @nnx.jit
    def step(model, optimizer, key):
        x, y = generate(key, BATCH, length)
        grads = nnx.grad(lambda m: loss_and_metric(task, m, x, y)[0])(model)
        optimizer.update(model, grads)

    @nnx.jit
    def test(model):
        return loss_and_metric(task, model, test_x, test_y)[1]

    metric_name, is_solved = SOLVED[task]
    start, curve, solved_at = time.perf_counter(), [], None
    train_key = jax.random.key(seed)
    for number in range(1, max_steps + 1):
        step(model, optimizer, jax.random.fold_in(train_key, number))
        if number % EVAL_EVERY == 0 or number == max_steps:
            value = float(test(model))
            curve.append([number, value])
            if is_solved(value):
                solved_at = number
                break
    record = {
        "task": task, "cell": cell, "length": length, "seed": seed, "metric": metric_name, "final": curve[-1][1],
        "steps_to_solve": solved_at, "steps_run": curve[-1][0], "seconds": time.perf_counter() - start,
        "curve": curve, "baseline": BASELINE[task],
    }  # fmt: skip
    if profile:
        record["gradient_at_init"], record["gradient_after_training"] = before, gradient_profile(task, model, length)
    return record


def _run_in_worker(arguments: dict) -> dict:
    return train_run(**arguments)


# ------------------------------------------------------------------------------------------ reporting


def summarize(records: list[dict]) -> list[dict]:
    """One row per (task, cell, length): median final metric over seeds, its range, and the solved runs."""
    rows = {}
    for record in records:
        rows.setdefault((record["task"], record["cell"], record["length"]), []).append(record)
    summary = []
    for (task, cell, length), runs in sorted(rows.items(), key=lambda item: (item[0][0], item[0][2], item[0][1])):
        finals = [r["final"] for r in runs]
        solved = [r["steps_to_solve"] for r in runs if r["steps_to_solve"] is not None]
        summary.append({
            "task": task, "cell": cell, "length": length, "seeds": len(runs), "median": statistics.median(finals),
            "min": min(finals), "max": max(finals), "solved": len(solved),
            "median_steps_to_solve": statistics.median(solved) if solved else None,
            "max_steps": max(r["steps_run"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
        })  # fmt: skip
    return summary


def table(summary: list[dict]) -> str:
    lines = ["| task | T | cell | final test metric (median, range over seeds) | solved | steps to solve (median) |"
             " seconds |", "|---|---:|---|---|---:|---:|---:|"]  # fmt: skip
    for row in summary:
        metric = "MSE" if row["task"] == "adding" else "accuracy"
        verdict = f"{row['solved']}/{row['seeds']}" + ("" if row["solved"] else f" (not within {row['max_steps']})")
        steps = f"{row['median_steps_to_solve']:.0f}" if row["median_steps_to_solve"] else "—"
        lines.append(f"| {row['task']} | {row['length']} | {row['cell']} | {metric} {row['median']:.4f} "
                     f"({row['min']:.4f}–{row['max']:.4f}) | {verdict} | {steps} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def plots(records: list[dict], summary: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, task in zip(axes, ("adding", "copy")):
        rows = [row for row in summary if row["task"] == task]
        for cell in CELLS:
            points = sorted((r["length"], r["median"], r["min"], r["max"]) for r in rows if r["cell"] == cell)
            if points:
                lengths, medians, lows, highs = zip(*points)
                spread = [[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]]
                axis.errorbar(lengths, medians, yerr=spread, marker="o", capsize=3, label=cell)
        axis.axhline(BASELINE[task], color="gray", linestyle="--", label="baseline")
        axis.set(xscale="log", xlabel="sequence length T (copy: the gap)",
                 ylabel="test MSE" if task == "adding" else "recall accuracy",
                 title="adding problem (lower is better)" if task == "adding" else "copy memory (higher is better)")
        if task == "adding":
            axis.set_yscale("log")
            axis.axhline(0.01, color="green", linestyle=":", label="solved")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out / "long_range_tasks.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    profiled = [r for r in records if "gradient_at_init" in r]
    if profiled:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for axis, key, title in zip(axes, ("gradient_at_init", "gradient_after_training"),
                                    ("at initialisation", "after training")):  # fmt: skip
            for record in profiled:
                distances = range(1, len(record[key]) + 1)
                axis.plot(distances, [max(v, 1e-30) for v in record[key]], label=record["cell"])
            axis.set(yscale="log", xlabel="distance T - t (steps back from the output)", title=title)
            axis.grid(alpha=0.3)
        axes[0].set_ylabel("mean ||d loss / d x_t||")
        axes[1].legend(fontsize=7)
        figure.suptitle(f"gradient flow, adding problem, T = {len(profiled[0]['gradient_at_init'])}")
        figure.tight_layout()
        paths.append(out / "long_range_gradients.png")
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths


def environment() -> dict:
    import flax
    import jax
    import optax

    device = jax.devices()[0]
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": sys.version.split()[0],
            "platform": device.platform, "device": getattr(device, "device_kind", str(device)),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "load": machine.describe()}  # fmt: skip


# ------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in {50, 100}, one seed, 600 steps at most")
    parser.add_argument("--out", default=None, help="results folder (default: a new one under ./bench-runs)")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated, from: " + ", ".join(CELLS))
    parser.add_argument("--lengths", default=None, help="comma-separated T (default 50,100,200,400; quick 50,100)")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1; quick 0)")
    parser.add_argument("--tasks", default="adding,copy")
    parser.add_argument("--max-steps", type=int, default=None, help="per adding run (default 2000; quick 600)")
    parser.add_argument("--copy-max-steps", type=int, default=None, help="per copy run (default 1000; quick 600)")
    parser.add_argument("--profile-length", type=int, default=100, help="T of the gradient-flow part")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    args.cells = args.cells.split(",")
    unknown = [cell for cell in args.cells if cell not in CELLS]
    if unknown:
        parser.error(f"unknown cell(s) {unknown}; choose from {list(CELLS)}")
    args.lengths = [int(v) for v in (args.lengths or ("50,100" if args.quick else "50,100,200,400")).split(",")]
    args.seeds = [int(v) for v in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    args.tasks = args.tasks.split(",")
    args.max_steps = args.max_steps or (600 if args.quick else 2000)
    args.copy_max_steps = args.copy_max_steps or (600 if args.quick else 1000)
    if min(args.lengths) < 2 or args.max_steps < 1 or args.workers < 1:
        parser.error("lengths must be >= 2, --max-steps and --workers >= 1")
    return args


def main(argv=None) -> dict:
    from tqdm import tqdm

    args = parse_args(argv)
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "long_range")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [dict(task=task, cell=cell, length=length, seed=seed,
                 max_steps=args.max_steps if task == "adding" else args.copy_max_steps,
                 profile=(task == "adding" and length == args.profile_length and seed == args.seeds[0]))
            for task in args.tasks for length in sorted(args.lengths, reverse=True) for cell in args.cells
            for seed in args.seeds]  # fmt: skip (longest first: the pool finishes evenly)
    if "adding" in args.tasks and args.profile_length not in args.lengths:  # the gradient part needs its own runs
        jobs += [dict(task="adding", cell=cell, length=args.profile_length, seed=args.seeds[0],
                      max_steps=args.max_steps, profile=True) for cell in args.cells]  # fmt: skip
    start, records = time.perf_counter(), []
    if args.workers == 1:
        records = [train_run(**job) for job in tqdm(jobs, desc="runs")]
    else:
        context = multiprocessing.get_context("spawn")  # JAX does not survive fork
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            futures = [pool.submit(_run_in_worker, job) for job in jobs]
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="runs"):
                records.append(future.result())
    summary = summarize([r for r in records if r["length"] in args.lengths])
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "settings": {"hidden": HIDDEN, "batch": BATCH, "learning_rate": LEARNING_RATE, "test_size": TEST_SIZE,
                           "eval_every": EVAL_EVERY, "max_steps": args.max_steps,
                           "copy_max_steps": args.copy_max_steps, "lengths": args.lengths,
                           "seeds": args.seeds, "cells": args.cells, "tasks": args.tasks, "copy_length": COPY_LENGTH,
                           "copy_symbols": COPY_SYMBOLS, "profile_length": args.profile_length},
              "environment": environment(), "wall_seconds": time.perf_counter() - start, "summary": summary,
              "records": records}  # fmt: skip
    (out / "long_range.json").write_text(json.dumps(result, indent=1))
    paths = plots(records, summary, out)
    print(table(summary))
    print(f"\nwall {result['wall_seconds']:.0f} s; wrote {out / 'long_range.json'}, " + ", ".join(map(str, paths)))
    return result


if __name__ == "__main__":
    main()
