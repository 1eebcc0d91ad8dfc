"""lstm_jax: LSTM-family sequence models in JAX / Flax NNX with exact variable-length semantics."""

from lstm_jax.cells import GRUCell, LSTMCell, PeepholeLSTMCell, SimpleRNNCell
from lstm_jax.recurrent import RNN, Bidirectional, StackedRNN, make_recurrent

__version__ = "0.1.0"

__all__ = [
    "GRUCell",
    "LSTMCell",
    "PeepholeLSTMCell",
    "SimpleRNNCell",
    "RNN",
    "Bidirectional",
    "StackedRNN",
    "make_recurrent",
]
