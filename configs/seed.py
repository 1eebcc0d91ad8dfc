"""The Keras tutorial exactly: Embedding(25000, 32) -> LSTM(32) -> Dense(1, sigmoid), max_len 100, batch 32,
Adam 1e-3, binary cross-entropy, 5 epochs, test on the final weights.

python train.py --config configs/seed.py --workdir checkpoints/seed
"""

from lstm_jax.sentiment.config import base_config


def get_config():
    config = base_config()
    config.test_checkpoint = "last"
    config.lock()
    return config
