"""The tutorial's IMDB job (Maas et al. 2011): the seed model on aclImdb.

python train.py --config configs/imdb.py --config.data_path=/path/to/aclImdb_v1.tar.gz --workdir checkpoints/imdb
(or --config.dataset=tfds:imdb_reviews with the tfds extra and network access)
"""

from lstm_jax.sentiment.config import base_config


def get_config():
    config = base_config()
    config.dataset = "imdb"
    config.test_checkpoint = "last"
    config.lock()
    return config
