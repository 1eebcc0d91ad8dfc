"""Our models' accuracy on the Rotten Tomatoes split, 3 seeds each, and on the negation set.

python benchmarks/accuracy.py                                  # every model below (about an hour on 2 cores)
python benchmarks/accuracy.py --models default,glove --seeds 0 # a subset
python benchmarks/accuracy.py --out benchmarks/results         # replace the committed results (of the models run)

Each (model, seed) is one ``python train.py --config ... --config.seed=S`` run in its own work folder (under the
run folder); the figures are the run's own: validation accuracy of the checkpoint it tests and the
``Accuracy:`` line (test split). The trained model then predicts ``examples/negation.tsv``. The linear
baselines are ``benchmarks/baselines.py``; the README's table joins both.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402
from baselines import read_negation_set  # noqa: E402

MODELS = {  # the shipped configs (configs/*.py on Rotten Tomatoes); what was tried and lost: results/HISTORY.md
    "tutorial": ["--config", "configs/seed.py"],
    "default": ["--config", "configs/default.py"],
    "vocab16k": ["--config", "configs/vocab16k.py"],
    "glove": ["--config", "configs/glove.py"],
    "glove_refit": ["--config", "configs/glove_all.py"],  # configs/glove.py on train + validation, 5 epochs
}


def train(name: str, seed: int, folder: Path, flags: list[str] | None = None) -> dict:
    """One ``train.py`` run of row ``name`` (or of ``flags``, when given) and its figures."""
    workdir = folder / f"{name}-seed{seed}"
    started = time.perf_counter()
    flags = MODELS[name] if flags is None else flags
    result = subprocess.run([sys.executable, "train.py", *flags, f"--config.seed={seed}", "--workdir", str(workdir)],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed: {result.stderr.strip().splitlines()[-1:]}")
    test = float(re.search(r"Accuracy: ([\d.]+)%", result.stdout).group(1)) / 100
    epochs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    validation = max((epoch["val_accuracy"] for epoch in epochs if "val_accuracy" in epoch), default=None)
    return {"model": name, "seed": seed, "validation": validation, "test": test, "seconds": round(seconds, 1),
            "negation": negation_accuracy(workdir), "workdir": str(workdir)}  # fmt: skip


def negation_accuracy(workdir: Path) -> float:
    from lstm_jax.sentiment.deploy.predict import load_predictor

    texts, labels = read_negation_set()
    probabilities = load_predictor(workdir).predict(texts)
    return float(np.mean((probabilities >= 0.5) == labels))


def results_table(runs: list[dict]) -> str:
    """The markdown table of the runs, one row per model (in MODELS' order): means over its seeds."""
    lines = ["| model | validation | test (mean ± spread) | seeds | negation set | train s (mean) |",
             "|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for name in [name for name in MODELS if any(run["model"] == name for run in runs)]:
        group = [run for run in runs if run["model"] == name]
        test = [run["test"] for run in group]
        validation = [run["validation"] for run in group if run["validation"] is not None]  # None: no split
        lines.append(f"| {name} | {f'{np.mean(validation):.2%}' if validation else '—'} | {np.mean(test):.2%} ± "
                     f"{(max(test) - min(test)) / 2:.2%} | {', '.join(f'{t:.2%}' for t in test)} | "
                     f"{np.mean([r['negation'] for r in group]):.1%} | {np.mean([r['seconds'] for r in group]):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="results folder (default: a new ./bench-runs/accuracy-<time>)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "accuracy")
    work = machine.fresh_folder("bench-runs", "accuracy-work")
    before = machine.describe()
    # Runs of the models not asked for this time stay as the results folder holds them.
    chosen = args.models.split(",")
    earlier = json.loads((out / "accuracy.json").read_text())["runs"] if (out / "accuracy.json").exists() else []
    runs = [run for run in earlier if run["model"] not in chosen]
    for name in chosen:
        for seed in map(int, args.seeds.split(",")):
            runs.append(train(name, seed, work))
            print(runs[-1], file=sys.stderr)
    table = results_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"machine_before": before, "machine_after": machine.describe(),
                                                   "runs": runs}, indent=2) + "\n")  # fmt: skip
    (out / "accuracy.md").write_text(f"# Our models on the Rotten Tomatoes split\n\n`python benchmarks/accuracy.py`"
                                     f"\n\n{table}")  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
