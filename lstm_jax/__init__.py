"""lstm_jax: LSTM-family sequence models in JAX / Flax NNX with exact variable-length semantics.

Names load on first use (PEP 562), so ``import lstm_jax`` for the layers does not import the job's orbax. An exported
model loads with ``lstm_jax.deploy.load(folder)``, which imports neither Flax nor orbax.
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "GRUCell": "lstm_jax.cells",
    "LayerNormLSTMCell": "lstm_jax.cells",
    "LSTMCell": "lstm_jax.cells",
    "PeepholeLSTMCell": "lstm_jax.cells",
    "SimpleRNNCell": "lstm_jax.cells",
    "MLSTMCell": "lstm_jax.xlstm",
    "SLSTMCell": "lstm_jax.xlstm",
    "RNN": "lstm_jax.recurrent",
    "Bidirectional": "lstm_jax.recurrent",
    "StackedRNN": "lstm_jax.recurrent",
    "make_recurrent": "lstm_jax.recurrent",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = list(_WHERE)
