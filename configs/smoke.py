"""Tiny and fast, for tests: python train.py --config configs/smoke.py --config.dataset=files ..."""

from lstm_jax.sentiment.config import base_config


def get_config():
    config = base_config()
    config.dataset = "files"
    config.vocab_size = 200
    config.max_len = 12
    config.embedding_dim = 8
    config.hidden_size = 8
    config.batch_size = 8
    config.num_epochs = 3
    config.learning_rate = 1e-2
    config.dropout_rate = 0.1
    config.checkpoint_every_steps = 3
    config.lock()
    return config
