"""Linear baselines on our Rotten Tomatoes split: what a user gets in seconds without a recurrent model.

python benchmarks/baselines.py                       # about 1-2 minutes on 2 CPU cores
python benchmarks/baselines.py --out benchmarks/results

The split is the job's (``configs/default.py``: train / validation / test by movie). Every hyper-parameter
(the inverse regularisation ``C``, and NB-SVM's interpolation) is chosen on the validation split only; the test
is scored once with the chosen setting, refitted on the training split. Models:

* majority class (the training split's most frequent label);
* TF-IDF of word 1-2-grams + logistic regression;
* TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries) + logistic regression;
* NB-SVM (Wang & Manning 2012): binary word 1-2-gram features scaled by the naive-Bayes log-count ratio, a
  linear SVM on them, weights interpolated towards their mean (``beta``).

Each is run with 3 seeds (the solvers' random state; the fits are deterministic given it, so the spread is 0
unless a solver is not) and also scored on ``examples/negation.tsv`` (statements whose sentiment turns on a
negation or a contrast). Our models are trained by ``train.py``; the README's table puts both side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union
from sklearn.svm import LinearSVC

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402

C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
SEEDS = (0, 1, 2)


def read_negation_set(path: Path = ROOT / "examples" / "negation.tsv") -> tuple[list[str], np.ndarray]:
    """``label<TAB>statement`` lines (``#`` comments skipped) -> (statements, labels)."""
    texts, labels = [], []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t", 1)
            texts.append(text)
            labels.append({"positive": 1, "negative": 0}[label])
    return texts, np.asarray(labels)


def tfidf_words():
    return TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)


def tfidf_words_chars():
    return make_union(tfidf_words(), TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2,
                                                     sublinear_tf=True))  # fmt: skip


class NBSVM:
    """Binary 1-2-gram features times the NB log-count ratio ``r``; a linear SVM; ``w = (1-beta) mean|w| + beta w``."""

    def __init__(self, C: float, beta: float, seed: int):
        self.C, self.beta, self.seed = C, beta, seed

    def fit(self, texts, labels):
        self.vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True)
        features = self.vectorizer.fit_transform(texts)
        positive = np.asarray(features[labels == 1].sum(0)).ravel() + 1.0
        negative = np.asarray(features[labels == 0].sum(0)).ravel() + 1.0
        self.ratio = np.log((positive / positive.sum()) / (negative / negative.sum()))
        svm = LinearSVC(C=self.C, random_state=self.seed, max_iter=20000).fit(features @ scipy.sparse.diags(self.ratio),
                                                                              labels)  # fmt: skip
        weights = svm.coef_.ravel()
        self.weights = (1 - self.beta) * np.abs(weights).mean() + self.beta * weights
        self.bias = svm.intercept_[0]
        return self

    def predict(self, texts):
        features = self.vectorizer.transform(texts) @ scipy.sparse.diags(self.ratio)
        return (features @ self.weights + self.bias > 0).astype(int)


class NgramScorer:
    """The default model's n-gram scorer alone (lstm_jax/sentiment/model/ngrams.py): NB-weighted logistic regression on
    hashed word 1-2-grams of the token ids of the default's vocabulary; C chosen by its own validation accuracy."""

    def __init__(self, validation):
        self.validation = validation

    def fit(self, texts, labels):
        from configs.default import get_config
        from lstm_jax.sentiment.model.ngrams import fit_ngram_scorer
        from lstm_jax.sentiment.tokenizer import Vocabulary

        config = get_config()
        self.vocabulary, self.max_len = Vocabulary.fit(texts, config.vocab_size, config.tokenizer), config.max_len
        self.fitted = fit_ngram_scorer((*self.vocabulary.encode(texts, self.max_len), labels),
                                       (*self.vocabulary.encode(self.validation.texts, self.max_len),
                                        self.validation.labels), config.ngram_buckets.bit_length() - 1)  # fmt: skip
        return self

    def predict(self, texts):
        from lstm_jax.sentiment.model.ngrams import ngram_logits

        tokens, lengths = self.vocabulary.encode(texts, self.max_len)
        return (np.asarray(ngram_logits(self.fitted.table, self.fitted.bias, tokens, lengths)) > 0).astype(int)


def _logistic(features, seed):
    return lambda C: make_pipeline(features(), LogisticRegression(C=C, max_iter=5000, random_state=seed))


MODELS = {
    "TF-IDF words + LR": lambda seed, splits: [(_logistic(tfidf_words, seed)(C), {"C": C}) for C in C_GRID],
    "TF-IDF words + chars + LR": lambda seed, splits: [(_logistic(tfidf_words_chars, seed)(C), {"C": C})
                                                       for C in C_GRID],
    "NB-SVM (words 1-2)": lambda seed, splits: [(NBSVM(C, beta, seed), {"C": C, "beta": beta})
                                                for C in (0.05, 0.1, 0.25, 0.5, 1.0) for beta in (0.25, 0.5, 1.0)],
    # C is chosen inside the fit, on the same validation split.
    "NB-LR, hashed word 1-2-grams (the default's n-gram scorer alone)": lambda seed, splits: [
        (NgramScorer(splits.validation), {"C": "chosen in fit"})],
}  # fmt: skip


def accuracy(model, texts, labels) -> float:
    return float(np.mean(model.predict(texts) == labels))


def evaluate(name: str, seed: int, splits, negation) -> dict:
    """Chooses the setting on validation, then scores test and the negation set."""
    started = time.perf_counter()
    train, validation = splits.train, splits.validation
    scored = [(accuracy(model.fit(train.texts, train.labels), validation.texts, validation.labels), setting, model)
              for model, setting in MODELS[name](seed, splits)]  # fmt: skip
    best, setting, model = max(scored, key=lambda item: item[0])
    return {"model": name, "seed": seed, "setting": setting, "validation": best,
            "test": accuracy(model, splits.test.texts, splits.test.labels),
            "negation": accuracy(model, *negation), "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results folder (default: a new ./bench-runs/baselines-<time>)")
    args = parser.parse_args(argv)
    from configs.default import get_config
    from lstm_jax.sentiment.data.datasets import load_splits

    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "baselines")
    splits, negation = load_splits(get_config()), read_negation_set()
    majority = int(np.bincount(splits.train.labels).argmax())
    share = lambda labels: float(np.mean(labels == majority))  # noqa: E731
    rows = [{"model": "majority class", "seed": seed, "setting": {"label": majority}, "seconds": 0.0,
             "validation": share(splits.validation.labels), "test": share(splits.test.labels),
             "negation": share(negation[1])} for seed in SEEDS]  # fmt: skip
    for name in MODELS:
        for seed in SEEDS:
            rows.append(evaluate(name, seed, splits, negation))
            print(rows[-1], file=sys.stderr)
    summary = {}
    for row in rows:
        summary.setdefault(row["model"], []).append(row)
    lines = ["| baseline | validation | test (mean ± spread, 3 seeds) | negation set | chosen on validation |",
             "|---|---:|---:|---:|---|"]  # fmt: skip
    for name, runs in summary.items():
        test = [run["test"] for run in runs]
        lines.append(f"| {name} | {np.mean([run['validation'] for run in runs]):.2%} | {np.mean(test):.2%} ± "
                     f"{(max(test) - min(test)) / 2:.2%} | {np.mean([run['negation'] for run in runs]):.1%} | "
                     f"{runs[0]['setting']} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine.describe(), "runs": rows, "negation_set_size": len(negation[0])}
    (out / "baselines.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "baselines.md").write_text(f"# Linear baselines on our split\n\n`python benchmarks/baselines.py`\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
