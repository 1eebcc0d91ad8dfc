"""lstm_jax: LSTM-family sequence models in JAX / Flax NNX with exact variable-length semantics."""

from lstm_jax.cells import GRUCell, LayerNormLSTMCell, LSTMCell, PeepholeLSTMCell, SimpleRNNCell
from lstm_jax.recurrent import RNN, Bidirectional, StackedRNN, make_recurrent
from lstm_jax.xlstm import MLSTMCell, SLSTMCell

__version__ = "0.1.0"


def __getattr__(name):
    # The job's pieces load lazily so `import lstm_jax` for the layers does not import orbax.
    if name == "load_predictor":
        from lstm_jax.sentiment.predict import load_predictor

        return load_predictor
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")


__all__ = [
    "load_predictor",
    "GRUCell",
    "LayerNormLSTMCell",
    "LSTMCell",
    "MLSTMCell",
    "PeepholeLSTMCell",
    "SimpleRNNCell",
    "SLSTMCell",
    "RNN",
    "Bidirectional",
    "StackedRNN",
    "make_recurrent",
]
