"""The default model with Stanford's GloVe 6B 50-d vectors as its starting embeddings (the [vectors] extra).

python train.py --config configs/glove.py --workdir checkpoints/glove

Same as configs/default.py (bidirectional GRU, mean-and-max pooling, dropout, early stopping on validation)
except that the embeddings start from GloVe (embedding_dim 50, the vectors' width) instead of PPMI-SVD. The
README's accuracy table gives its measured test accuracy and the validation experiments behind the choices.
"""

from configs.default import get_config as default_config


def get_config():
    config = default_config()
    config.unlock()
    config.embedding_init = "glove"
    config.embedding_dim = 50  # the vectors' width
    config.lock()
    return config
