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

# The default's batches until 2026-12-02 14:40 UTC (the plain shuffle, padded to a multiple of 16): the rows
# measured then name them, so each row's command still computes what its figures say.
PLAIN = ["--config.length_pool=0", "--config.train_length_bucket=0"]
# configs/glove.py evaluates a moving average of the weights since 2026-12-02 17:33 UTC and has variational
# recurrent dropout since 18:06 UTC; the GloVe rows measured before name their absence.
NO_EMA = ["--config.ema_decay=0"]
NO_RD = ["--config.recurrent_dropout_rate=0"]
V2 = ["--config.tokenizer=lowercase-words-v2"]  # typographic apostrophes (’) as apostrophes
# configs/glove.py as it was until 2026-12-03 07:00 UTC (ids for the 16,000 most frequent training words, not all
# 17,645), which earlier rows ran; until 02:55 UTC (also dropout 0.5 before the output layer); until 00:25 UTC
# (also hidden size 64); and until 2026-12-02 22:14 UTC (also without subwords and the static channel).
GLOVE_VOCAB16K = ["--config", "configs/glove.py", "--config.vocab_size=16000"]
GLOVE_DROPOUT05 = [*GLOVE_VOCAB16K, "--config.dropout_rate=0.5"]
GLOVE_H64 = [*GLOVE_DROPOUT05, "--config.hidden_size=64"]
GLOVE_BEFORE_SUBWORDS = [*GLOVE_H64, "--config.static_embeddings=false", "--config.subword_buckets=0"]
SUBWORDS = ["--config.subword_buckets=131072"]  # character 3-5-grams of every vocabulary word, 2^17 buckets
# Refit: train on train + validation (no validation split, so no early stopping) for a fixed number of epochs, the
# mean over seeds 0-2 of the best epoch of the config's own runs, rounded (default: 4, 5, 6; GloVe with dropout
# 0.5: 5, 7, 5; GloVe with hidden size 64: 5, 6, 5; GloVe before subwords: 6, 8, 8; configs/glove.py: 4, 7, 5).
REFIT = ["--config.validation_fraction=0", "--config.early_stopping_patience=0"]
MODELS = {
    "tutorial": ["--config", "configs/seed.py"],
    "default": ["--config", "configs/default.py"],
    # The tutorial's model, the default and configs/glove.py with the tokenizer rules that read "can’t" as "can't".
    "tutorial_tokenizer_v2": ["--config", "configs/seed.py", *V2],
    "default_tokenizer_v2": ["--config", "configs/default.py", *V2],
    "glove_tokenizer_v2": [*GLOVE_BEFORE_SUBWORDS, *V2],
    "default_refit": ["--config", "configs/default.py", *REFIT, "--config.num_epochs=5"],
    "glove_dropout05_refit": [*GLOVE_DROPOUT05, *REFIT, "--config.num_epochs=6"],
    "glove_h64_refit": [*GLOVE_H64, *REFIT, "--config.num_epochs=5"],
    "glove_before_subwords_refit": [*GLOVE_BEFORE_SUBWORDS, *REFIT, "--config.num_epochs=7"],
    "glove_refit": ["--config", "configs/glove_all.py"],  # configs/glove.py, *REFIT, 5 epochs
    # Length pools chosen on validation among these (3 seeds each): the plain shuffle was the default before.
    "default_plain_batches": ["--config", "configs/default.py", *PLAIN],
    "default_pool8_bucket16": ["--config", "configs/default.py", "--config.train_length_bucket=0"],
    "default_pool16_bucket8": ["--config", "configs/default.py", "--config.length_pool=16"],
    "default_pool8_bucket4": ["--config", "configs/default.py", "--config.train_length_bucket=4"],
    "default_without_ngrams": ["--config", "configs/default.py", "--config.ngram_buckets=0", *PLAIN],  # alone
    # The default's scorer on word 1-2-grams (the default before 1-3-grams; those runs were made as "default").
    "default_bigrams": ["--config", "configs/default.py", "--config.ngram_order=2", *PLAIN],
    # The from-scratch recurrent variant with the best mean validation accuracy (README: what was tried).
    "scratch_vocab16k": ["--config", "configs/default.py", "--config.vocab_size=16000",
                         "--config.word_dropout_rate=0.4", "--config.ngram_buckets=0", *PLAIN],
    # The same variant with the n-gram scorer (tried for the default on validation), on 1-2-grams and 1-3-grams.
    "scratch_vocab16k_ngrams": ["--config", "configs/default.py", "--config.vocab_size=16000",
                                "--config.word_dropout_rate=0.4", "--config.ngram_order=2", *PLAIN],
    "scratch_vocab16k_trigrams": ["--config", "configs/vocab16k.py"],  # = the default, 16k words, word dropout 0.4
    # An ensemble of 3 recurrent models beside the default's scorer.
    "default_ensemble3": ["--config", "configs/default.py", "--config.ensemble_size=3", *PLAIN],
    # A moving average of the weights (evaluated and saved for prediction), tried for the default on validation.
    "default_ema99": ["--config", "configs/default.py", "--config.ema_decay=0.99"],
    "default_ema998": ["--config", "configs/default.py", "--config.ema_decay=0.998"],
    # Adversarial training on the embeddings (adversarial_epsilon: the perturbation's L2 norm per text).
    "default_adversarial01": ["--config", "configs/default.py", "--config.adversarial_epsilon=0.1"],
    "default_adversarial03": ["--config", "configs/default.py", "--config.adversarial_epsilon=0.3"],
    "default_adversarial1": ["--config", "configs/default.py", "--config.adversarial_epsilon=1"],
    # The default with its recurrent model trained on top of the (1-2-gram) scorer's out-of-fold logits.
    "default_ngram_residual": ["--config", "configs/default.py", "--config.ngram_residual=true",
                               "--config.ngram_order=2", *PLAIN],
    "vocab16k_pooled": ["--config", "configs/vocab16k.py", "--config.length_pool=8",
                        "--config.train_length_bucket=8"],
    "glove": ["--config", "configs/glove.py"],
    "glove_vocab16k": [*GLOVE_VOCAB16K],  # configs/glove.py from 2026-12-03 02:55 UTC to 07:00 UTC
    "glove_dropout05": [*GLOVE_DROPOUT05],  # configs/glove.py from 2026-12-03 00:25 UTC to 02:55 UTC
    "glove_h64": [*GLOVE_H64],  # configs/glove.py from 2026-12-02 22:14 UTC to 2026-12-03 00:25 UTC
    "glove_before_subwords": [*GLOVE_BEFORE_SUBWORDS],  # configs/glove.py until 22:14 UTC
    # What configs/glove.py was chosen among (3 seeds each): without the moving average (configs/glove.py until
    # 17:33 UTC), without the recurrent dropout (until 18:06 UTC), and variants of the latter: a slower average,
    # a cosine schedule, twice the learning rate, other encoders, other regularisers.
    "glove_without_ema": [*GLOVE_BEFORE_SUBWORDS, *NO_EMA, *NO_RD],
    "glove_without_recurrent_dropout": [*GLOVE_BEFORE_SUBWORDS, *NO_RD],
    "glove_ema998": [*GLOVE_BEFORE_SUBWORDS, "--config.ema_decay=0.998", *NO_RD],
    "glove_cosine": [*GLOVE_BEFORE_SUBWORDS, "--config.schedule=cosine", "--config.warmup_epochs=1", *NO_RD],
    "glove_lr2e3": [*GLOVE_BEFORE_SUBWORDS, "--config.learning_rate=0.002", *NO_RD],
    "glove_two_layers": [*GLOVE_BEFORE_SUBWORDS, "--config.num_layers=2", *NO_RD],  # stacked BiGRUs
    "glove_lstm": [*GLOVE_BEFORE_SUBWORDS, "--config.cell=lstm", *NO_RD],  # a BiLSTM
    "glove_zoneout": [*GLOVE_BEFORE_SUBWORDS, "--config.zoneout_rate=0.1", *NO_RD],
    "glove_weight_decay": [*GLOVE_BEFORE_SUBWORDS, "--config.weight_decay=0.01", *NO_RD],
    # Adversarial training on the embeddings (adversarial_epsilon: the perturbation's L2 norm per text).
    "glove_adversarial01": [*GLOVE_BEFORE_SUBWORDS, "--config.adversarial_epsilon=0.1"],
    "glove_adversarial03": [*GLOVE_BEFORE_SUBWORDS, "--config.adversarial_epsilon=0.3"],
    "glove_ensemble3_now": [*GLOVE_BEFORE_SUBWORDS, "--config.ensemble_size=3"],  # configs/glove.py's own
    # Two more inputs to the encoder: a static (frozen) copy of the initial vectors beside the trained ones, and
    # character 3-5-gram embeddings hashed into 2^17 buckets (configs/glove.py has both since 22:14 UTC: these
    # rows are each alone, and each from scratch).
    "glove_static": [*GLOVE_H64, "--config.subword_buckets=0"],
    "glove_subwords": [*GLOVE_H64, "--config.static_embeddings=false"],
    "glove_subwords_2e15": [*GLOVE_H64, "--config.subword_buckets=32768"],  # 4x fewer buckets
    # What came after (3 seeds each): other widths of the recurrent state (128 has been configs/glove.py since
    # 2026-12-03 00:25 UTC), then batches, regularisers, pooling and patience around both widths.
    "glove_h96": [*GLOVE_DROPOUT05, "--config.hidden_size=96"],
    "glove_h192": [*GLOVE_DROPOUT05, "--config.hidden_size=192"],
    "glove_h64_word_dropout04": [*GLOVE_H64, "--config.word_dropout_rate=0.4"],
    "glove_h64_embedding_dropout04": [*GLOVE_H64, "--config.embedding_dropout_rate=0.4"],
    "glove_h64_batch64": [*GLOVE_H64, "--config.batch_size=64"],
    "glove_h64_max_pooling": [*GLOVE_H64, "--config.pooling=max"],
    "glove_h64_patience5": [*GLOVE_H64, "--config.early_stopping_patience=5", "--config.num_epochs=20"],
    "glove_recurrent_dropout04": [*GLOVE_DROPOUT05, "--config.recurrent_dropout_rate=0.4"],
    "glove_word_dropout04": [*GLOVE_DROPOUT05, "--config.word_dropout_rate=0.4"],
    "glove_max_pooling": [*GLOVE_DROPOUT05, "--config.pooling=max"],
    "glove_embedding_dropout01": [*GLOVE_DROPOUT05, "--config.embedding_dropout_rate=0.1"],
    "glove_lr5e4": [*GLOVE_DROPOUT05, "--config.learning_rate=0.0005", "--config.num_epochs=20"],
    "glove_word_dropout02": [*GLOVE_DROPOUT05, "--config.word_dropout_rate=0.2"],
    "glove_batch16": [*GLOVE_DROPOUT05, "--config.batch_size=16"],
    # Dropout before the output layer (0.5 until 02:55 UTC; configs/glove.py has 0.2 since).
    "glove_dropout04": [*GLOVE_VOCAB16K, "--config.dropout_rate=0.4"],
    "glove_dropout03": [*GLOVE_VOCAB16K, "--config.dropout_rate=0.3"],
    "glove_dropout01": [*GLOVE_VOCAB16K, "--config.dropout_rate=0.1"],
    # Label smoothing (training targets 1 - s/2 and s/2).
    "glove_label_smoothing01": [*GLOVE_VOCAB16K, "--config.label_smoothing=0.1"],
    "glove_label_smoothing02": [*GLOVE_VOCAB16K, "--config.label_smoothing=0.2"],
    "glove_buckets2e15": [*GLOVE_VOCAB16K, "--config.subword_buckets=32768"],  # 4x fewer buckets
    # Then (2026-12-03, 3 seeds each): a slower average, gradient clipping, two stacked BiGRU layers, and ids for
    # every training word (configs/glove.py since 07:00 UTC, the row "glove").
    "glove_ema995": [*GLOVE_VOCAB16K, "--config.ema_decay=0.995"],
    "glove_clip1": [*GLOVE_VOCAB16K, "--config.grad_clip_norm=1"],
    "glove_two_layers_now": [*GLOVE_VOCAB16K, "--config.num_layers=2"],
    # On configs/glove.py since 07:00 UTC: ids for GloVe's first 200,000 other words, and word dropout 0.4.
    "glove_vectors200k": ["--config", "configs/glove.py", "--config.vectors_vocab=200000"],
    "glove_word_dropout04_now": ["--config", "configs/glove.py", "--config.word_dropout_rate=0.4"],
    "default_subwords": ["--config", "configs/default.py", *SUBWORDS],
    "vocab16k_subwords": ["--config", "configs/vocab16k.py", *SUBWORDS],
    "glove_plain_batches": [*GLOVE_BEFORE_SUBWORDS, *PLAIN, *NO_EMA, *NO_RD],
    "glove_ensemble3": [*GLOVE_BEFORE_SUBWORDS, "--config.ensemble_size=3", *NO_EMA, *NO_RD],
    "glove_without_ngrams": [*GLOVE_BEFORE_SUBWORDS, "--config.ngram_buckets=0", *PLAIN, *NO_EMA, *NO_RD],
    "glove_bigrams": [*GLOVE_BEFORE_SUBWORDS, "--config.ngram_order=2", *PLAIN, *NO_EMA, *NO_RD],
    "glove_ngram_residual": [*GLOVE_BEFORE_SUBWORDS, "--config.ngram_residual=true", "--config.ngram_order=2",
                             *PLAIN, *NO_EMA, *NO_RD],
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
