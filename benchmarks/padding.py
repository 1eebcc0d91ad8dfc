"""How much a training batch is padded, and that evaluation does not depend on the padding (README "Training time").

python benchmarks/padding.py                                # the Rotten Tomatoes split, default config
python benchmarks/padding.py --workdir checkpoints/default  # + a trained model's probabilities across buckets

Prints the training texts' mean length, the mean padded time steps per training batch over 3 epochs' plans for
the plain shuffle and for length pools (each padded to multiples of 16 and of 8), and, with ``--workdir``, the
largest change of the model's probabilities on validation + test when evaluation pads to multiples of 4, 8 or 16
(the padded steps are masked exactly, so only float summation order may differ) and whether any decision moves.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPOCHS = 3
SETTINGS = [(0, 16), (8, 16), (8, 8), (16, 8)]  # (length_pool, padding multiple)


def mean_padded_steps(lengths: np.ndarray, config, pool: int, bucket: int) -> float:
    """Mean padded length of a training batch over the first EPOCHS epochs' plans, planned as train.py plans
    them (train.py pads pooled batches to multiples of 8 and the plain shuffle's to length_bucket)."""
    from lstm_jax.sentiment.batching import plan_training_batches

    def times(epoch: int) -> tuple:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(lengths))
        return plan_training_batches(lengths, config.batch_size, bucket, config.max_len, order, pool,
                                     np.random.default_rng([config.seed, epoch, 1])).time  # fmt: skip

    return float(np.mean([time for epoch in range(EPOCHS) for time in times(epoch)]))


def probability_changes(workdir: str, texts: list[str]) -> None:
    from lstm_jax.sentiment.deploy.predict import load_predictor

    predictor = load_predictor(workdir)
    by_bucket = {}
    for bucket in (4, 8, 16):
        predictor.length_bucket = bucket
        by_bucket[bucket] = predictor.predict(texts)
    reference = by_bucket[16]
    for bucket in (4, 8):
        change = float(np.abs(by_bucket[bucket] - reference).max())
        moved = int(np.sum((by_bucket[bucket] >= 0.5) != (reference >= 0.5)))
        print(f"evaluation padded to {bucket} vs 16: largest probability change {change:.3g}, "
              f"{moved} of {len(texts)} decisions moved")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.py"))
    parser.add_argument("--workdir", default=None, help="a trained run: also compare its probabilities")
    args = parser.parse_args(argv)
    from lstm_jax.sentiment.data import datasets as data
    from lstm_jax.sentiment.tokenizer import Vocabulary

    spec = importlib.util.spec_from_file_location("config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    splits = data.load_splits(config)
    vocabulary = Vocabulary.fit(splits.train.texts, config.vocab_size, config.tokenizer)
    _, lengths = vocabulary.encode(splits.train.texts, config.max_len)
    print(f"training texts: {len(lengths)}, mean length {lengths.mean():.1f} tokens (max_len {config.max_len})")
    for pool, bucket in SETTINGS:
        name = f"length_pool={pool}" if pool else "plain shuffle"
        steps = mean_padded_steps(lengths, config, pool, bucket)
        print(f"{name:>15}, padded to multiples of {bucket:2d}: {steps:.1f} steps per batch on average")
    if args.workdir:
        probability_changes(args.workdir, list(splits.validation.texts) + list(splits.test.texts))


if __name__ == "__main__":
    main()
