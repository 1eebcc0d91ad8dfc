"""Our best model for the default dataset (Rotten Tomatoes), chosen by validation experiments.

python train.py                      # = python train.py --config configs/default.py --workdir checkpoints/default

A bidirectional GRU over embeddings initialised from the training texts' co-occurrences (PPMI + SVD), with
mean-and-max pooling over the real tokens, word/embedding/output dropout, training batches of similar
lengths (each cut from a length-sorted pool of 8 batches' worth of shuffled texts), early stopping on validation
accuracy and the test evaluated on the best validation checkpoint; its logit is summed with that of a linear
word 1-3-gram model (NB-weighted logistic regression, fitted before training: lstm_jax/sentiment/model/ngrams.py),
which the two models' different mistakes make worth about a point. Reaches about 78% test accuracy in about
25 s on 2 cores (`python benchmarks/accuracy.py --models default`; the experiments behind the choices are in
benchmarks/results/HISTORY.md).
"""

from lstm_jax.sentiment.config import base_config


def get_config():
    config = base_config()
    config.vocab_size = 8000  # the ~8k most frequent training words (rarer ones mostly overfit)
    config.cell = "gru"
    config.bidirectional = True
    config.embedding_dim = 64
    config.hidden_size = 64
    config.embedding_init = "ppmi_svd"
    config.pooling = "mean_max"
    config.dropout_rate = 0.5
    config.embedding_dropout_rate = 0.25
    config.word_dropout_rate = 0.3
    config.ngram_buckets = 1 << 20  # + the logit of a word 1-3-gram model hashed into 2^20 buckets (4 MB)
    config.ngram_order = 3  # word 1-3-grams
    config.length_pool = 8  # training batches cut from length-sorted pools of 8 batches' worth of shuffled texts
    config.num_epochs = 12
    config.early_stopping_patience = 3
    config.test_checkpoint = "best"
    config.lock()
    return config
