"""The from-scratch model with the best mean validation accuracy (README "Accuracy against linear baselines").

python train.py --config configs/vocab16k.py --workdir checkpoints/vocab16k

configs/default.py with the 16,000 most frequent training words instead of 8,000, word dropout 0.4 instead of 0.3,
and the plain shuffled training batches padded to a multiple of 16 (the default's before its length pools):
validation 80.20% against the default's 79.84% (seeds 0-2), but test 77.61% against 78.33%, and about 1.5x the
default's training time, so it is not the default. With the default's length pools it scored validation 79.98%,
test 77.94%. Same n-gram scorer (word 1-3-grams).
"""

from configs.default import get_config as default_config


def get_config():
    config = default_config()
    config.unlock()
    config.vocab_size = 16000  # rarer words keep their own ids; stronger word dropout keeps them from overfitting
    config.word_dropout_rate = 0.4
    config.length_pool = 0  # the plain shuffle, padded to multiples of 16 (length_bucket)
    config.lock()
    return config
