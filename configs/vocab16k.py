"""The from-scratch model with the best mean validation accuracy (README "Accuracy against linear baselines").

python train.py --config configs/vocab16k.py --workdir checkpoints/vocab16k

configs/default.py with the 16,000 most frequent training words instead of 8,000 and word dropout 0.4 instead of
0.3: validation 80.20% against the default's 79.53% (seeds 0-2), but test 77.61% against 77.97%, and about 1.5x
the default's training time, so it is not the default. Same n-gram scorer (word 1-3-grams).
"""

from configs.default import get_config as default_config


def get_config():
    config = default_config()
    config.unlock()
    config.vocab_size = 16000  # rarer words keep their own ids; stronger word dropout keeps them from overfitting
    config.word_dropout_rate = 0.4
    config.lock()
    return config
