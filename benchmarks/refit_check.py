"""Is refitting a config on train + validation worth it? Judged on the validation split alone, never the test.

python benchmarks/refit_check.py                                  # configs/glove.py, seeds 0-2 (about 7 minutes)
python benchmarks/refit_check.py --config configs/default.py --seeds 0 --out DIR

The refit (`configs/glove_all.py`) trains on the validation movies too, so the validation split cannot score it.
This check plays the same protocol one level down, on Rotten Tomatoes' training movies alone: those whose hash
position comes next after the validation movies' (as many positions again: 0.3 to 0.4) are held out, and

- early-stopped: the config trains on the other training movies and stops early on the held-out ones;
- refitted: the config trains on all the training movies (those plus the held-out ones) for the mean of the
  early-stopped runs' best epochs, rounded, with nothing held out (so the n-gram scorer takes C = 1);

then both are scored on the real validation split, which neither trained on: there it stands in for the test.
Refitting is worth it for the config when the refitted runs score higher. Results: DIR/refit_check-CONFIG.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402
from accuracy import train  # noqa: E402

from lstm_jax.sentiment.config import base_config  # noqa: E402
from lstm_jax.sentiment.data.datasets import RT_TEST_SHARE, rotten_tomatoes_reviews, rt_split  # noqa: E402


def inner_splits(config) -> dict[str, list[tuple[str, int]]]:
    """The job's Rotten Tomatoes training split cut again by movie, with the job's own rule shifted past the
    validation movies: ``held_out`` (the next band of hash positions, as wide as validation's), ``inner_train``
    (the rest); and the job's ``validation`` split."""
    inner_test_share = RT_TEST_SHARE + config.validation_fraction  # everything below: the job's test and validation
    splits = {"inner_train": [], "held_out": [], "validation": []}
    for text, label, position in rotten_tomatoes_reviews(config):
        split = rt_split(position, config.validation_fraction)
        if split == "train":
            inner = rt_split(position, config.validation_fraction, inner_test_share)
            split = "held_out" if inner == "validation" else "inner_train"
        if split != "test":
            splits[split].append((text, label))
    return splits


def write_reviews(path: Path, reviews: list[tuple[str, int]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(reviews)
    return str(path)


def best_epoch(workdir: Path) -> int:
    """The epoch with the highest validation accuracy in ``workdir``'s metrics (ties: the first, as the job)."""
    epochs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [epoch for epoch in epochs if "val_accuracy" in epoch]
    return max(epochs, key=lambda epoch: (epoch["val_accuracy"], -epoch["epoch"]))["epoch"]


def run_both(config_path: str, seeds: list[int], work: Path, files: dict[str, str]) -> tuple[list, list, list]:
    """The early-stopped runs, their best epochs, and the refitted runs (each: accuracy.train's record)."""
    data = ["--config", config_path, "--config.dataset=files", f"--config.test_path={files['validation']}"]
    inner = [*data, f"--config.train_path={files['inner_train']}", f"--config.val_path={files['held_out']}"]
    early = [train("early_stopped", seed, work, inner) for seed in seeds]
    epochs = [best_epoch(Path(run["workdir"])) for run in early]
    every_movie = [*data, f"--config.train_path={files['train']}", "--config.validation_fraction=0",
                   "--config.early_stopping_patience=0", f"--config.num_epochs={round(np.mean(epochs))}"]  # fmt: skip
    return early, epochs, [train("refitted", seed, work, every_movie) for seed in seeds]


def report(config_path: str, sizes: dict[str, int], early: list, epochs: list, refit: list) -> str:
    lines = [f"# Refit check of {config_path} (scored on the validation split)", "",
             f"inner training {sizes['inner_train']}, held out {sizes['held_out']}, validation "
             f"{sizes['validation']} reviews; best epochs of the early-stopped runs: {epochs}", "",
             "| protocol | validation split (mean) | seeds |", "|---|---:|---|"]  # fmt: skip
    for name, runs in (("early-stopped", early), (f"refitted, {round(np.mean(epochs))} epochs", refit)):
        scores = [run["test"] for run in runs]
        lines.append(f"| {name} | {np.mean(scores):.2%} | {', '.join(f'{score:.2%}' for score in scores)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/glove.py")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="results folder (default: a new ./bench-runs/refit_check-<time>)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "refit_check")
    work = machine.fresh_folder("bench-runs", "refit_check-work")
    splits = inner_splits(base_config())  # the default data settings, as every config here has them
    splits["train"] = splits["inner_train"] + splits["held_out"]  # every training movie
    files = {name: write_reviews(work / f"{name}.csv", reviews) for name, reviews in splits.items()}
    early, epochs, refit = run_both(args.config, [int(seed) for seed in args.seeds.split(",")], work, files)
    sizes = {name: len(reviews) for name, reviews in splits.items()}
    # Named for what they are here: the train.py run's "validation" is the held-out movies, its "test" the
    # validation split.
    runs = [{"protocol": run["model"], "seed": run["seed"], "held_out": run["validation"],
             "validation_split": run["test"], "seconds": run["seconds"], "negation": run["negation"]}
            for run in early + refit]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    name = f"refit_check-{Path(args.config).stem}"
    (out / f"{name}.json").write_text(json.dumps({"config": args.config, "sizes": sizes, "best_epochs": epochs,
                                                      "runs": runs}, indent=2) + "\n")  # fmt: skip
    table = report(args.config, sizes, early, epochs, refit)
    (out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
