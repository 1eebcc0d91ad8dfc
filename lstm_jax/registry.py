"""Every cell by name, for the layer builders and weight import.

The registry lives above the cell modules (``cells.py``, ``xlstm.py``), which import nothing from it, so the
package has no import cycle.
"""

from lstm_jax.cells import GRUCell, LayerNormLSTMCell, LSTMCell, PeepholeLSTMCell, SimpleRNNCell
from lstm_jax.xlstm import MLSTMCell, SLSTMCell

CELLS = {
    "lstm": LSTMCell,
    "peephole_lstm": PeepholeLSTMCell,
    "layernorm_lstm": LayerNormLSTMCell,
    "gru": GRUCell,
    "simple_rnn": SimpleRNNCell,
    "slstm": SLSTMCell,
    "mlstm": MLSTMCell,
}
