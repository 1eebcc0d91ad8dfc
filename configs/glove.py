"""The default model with Stanford's GloVe 6B 50-d vectors (the [vectors] extra), chosen on validation.

python train.py --config configs/glove.py --workdir checkpoints/glove

Same as configs/default.py (bidirectional GRU, mean-and-max pooling, dropout, early stopping on validation, plus
the word 1-3-gram scorer's logit) except that the embeddings start from GloVe (embedding_dim 50, the vectors'
width) instead of PPMI-SVD, the recurrent state is twice as wide (128 per direction), the vocabulary keeps every
training word (17,645 in Rotten Tomatoes' training split), the vectors' first 100,000 other words get ids too
(words never seen in training keep their GloVe meaning), each word's embedding also holds the mean of its
character 3-5-grams' vectors, the encoder also reads a frozen copy of the GloVe vectors, the recurrent state has
variational dropout, the dropout before the output layer is 0.2 instead of 0.5, and validation, prediction and
export use a moving average of the weights. Chosen by mean validation accuracy over seeds 0-2 among the variants
in benchmarks/results/HISTORY.md; reaches about 80% test accuracy in about 95 s on 2 cores
(`python benchmarks/accuracy.py --models glove`).
"""

from configs.default import get_config as default_config


def get_config():
    config = default_config()
    config.unlock()
    config.embedding_init = "glove"
    config.embedding_dim = 50  # the vectors' width
    config.vocab_size = 20000  # ids for every training word (GloVe gives even rare ones a starting point)
    config.vectors_vocab = 100000  # + the vectors' most frequent other words
    config.ema_decay = 0.99  # evaluate and predict with a moving average of the weights
    config.recurrent_dropout_rate = 0.25  # variational dropout on the recurrent state
    config.hidden_size = 128  # twice the default's width
    config.dropout_rate = 0.2  # before the output layer
    config.subword_buckets = 1 << 17  # character 3-5-grams of every word, hashed into 2^17 rows
    config.static_embeddings = True  # the encoder also reads a frozen copy of the GloVe vectors
    config.lock()
    return config
