"""Weight import from PyTorch and Keras 3 recurrent layers.

``from_torch(torch.nn.LSTM | GRU | RNN)`` and ``from_keras(keras.layers.LSTM | GRU | SimpleRNN |
Bidirectional)`` return a :class:`lstm_jax.StackedRNN` that computes the same function:
``outputs, carries = layer(x, lengths=lengths)`` equals PyTorch's packed-sequence outputs (zero padded)
and Keras' outputs on the real tokens. Neither framework is imported unless these functions are called.

PyTorch LSTMs with ``proj_size`` become projection LSTMs (``LSTMCell(proj_size=...)``). What does not
convert raises :class:`ConversionError`: activations other than tanh / sigmoid, Keras GRUs with
``reset_after=False``, Bidirectional merge modes other than ``concat``, unbuilt Keras layers. Training-only
settings (Keras ``dropout``/``recurrent_dropout``) do not affect the imported function and are not carried;
PyTorch's inter-layer ``dropout`` is carried.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lstm_jax.recurrent import RNN, Bidirectional, StackedRNN, make_recurrent
from lstm_jax.registry import CELLS


class ConversionError(ValueError):
    """The source layer has a feature lstm_jax cannot reproduce exactly."""


def _set(variable: nnx.Param, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, np.float32)
    if variable[...].shape != value.shape:
        raise ConversionError(f"{what}: expected shape {variable[...].shape}, got {value.shape}")
    variable[...] = value


def _direction_rnns(layer: nnx.Module) -> list[RNN]:
    return [layer.forward_rnn, layer.backward_rnn] if isinstance(layer, Bidirectional) else [layer]


# ----------------------------------------------------------------------------------------------- torch


def from_torch(module) -> StackedRNN:
    """Converts a ``torch.nn.LSTM``, ``torch.nn.GRU`` or ``torch.nn.RNN`` (tanh) to a :class:`StackedRNN`.

    Any ``num_layers``, ``bidirectional``, ``bias`` and ``batch_first``: with ``batch_first=False`` the
    returned layer takes time-major ``[time, batch, features]`` inputs, as the PyTorch module did.
    """
    import torch

    cell_kwargs = {}
    if isinstance(module, torch.nn.LSTM):
        cell = "lstm"
        if getattr(module, "proj_size", 0):
            cell_kwargs["proj_size"] = module.proj_size
    elif isinstance(module, torch.nn.GRU):
        cell = "gru"
    elif isinstance(module, torch.nn.RNN):
        cell = "simple_rnn"
        if module.nonlinearity != "tanh":
            raise ConversionError(
                f"torch.nn.RNN with nonlinearity={module.nonlinearity!r} cannot be converted; only 'tanh'"
            )
    else:
        raise ConversionError(f"from_torch converts torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")

    layer = make_recurrent(
        cell,
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        dropout_rate=float(module.dropout),
        time_major=not module.batch_first,
        use_bias=module.bias,
        rngs=nnx.Rngs(0),
        **cell_kwargs,
    )
    weights = _TorchWeights(module)
    for index, stacked_layer in enumerate(layer.layers):
        for rnn, suffix in zip(_direction_rnns(stacked_layer), ["", "_reverse"]):
            name = f"l{index}{suffix}"
            target = rnn.cell
            _set(target.input_kernel, weights[f"weight_ih_{name}"].T, f"weight_ih_{name}")
            _set(target.recurrent_kernel, weights[f"weight_hh_{name}"].T, f"weight_hh_{name}")
            if cell_kwargs:  # LSTMP: h_t = W_hr (o_t * tanh c_t)
                _set(target.projection_kernel, weights[f"weight_hr_{name}"].T, f"weight_hr_{name}")
            if module.bias:
                b_ih, b_hh = weights[f"bias_ih_{name}"], weights[f"bias_hh_{name}"]
                if cell == "gru":  # r multiplies (h W_hn + b_hn): the two biases stay apart
                    _set(target.bias, b_ih, f"bias_ih_{name}")
                    _set(target.recurrent_bias, b_hh, f"bias_hh_{name}")
                else:
                    _set(target.bias, b_ih + b_hh, f"bias_ih_{name} + bias_hh_{name}")
    return layer


class _TorchWeights:
    """``weights["weight_hh_l0"]`` as NumPy: the effective tensor, read as an attribute of the module, so a
    reparametrised weight (``torch.nn.utils.parametrizations.weight_norm``, the older ``weight_norm`` hook,
    spectral norm) converts as the module computes it (``named_parameters`` would list ``..._g`` / ``..._v``)."""

    def __init__(self, module):
        self.module = module

    def __getitem__(self, name: str):
        import torch

        with torch.no_grad():
            tensor = getattr(self.module, name, None)
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{type(self.module).__name__} has no tensor {name!r}; from_torch reads the "
                                  "standard nn.LSTM / GRU / RNN weights (weight_ih_l0, weight_hh_l0, ...)")  # fmt: skip
        return tensor.detach().cpu().numpy()


# ----------------------------------------------------------------------------------------------- keras


def _activation_name(function) -> str:
    return getattr(function, "__name__", repr(function))


def _keras_rnn(keras_layer, reverse: bool) -> RNN:
    import keras

    cell_kind = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}.get(type(keras_layer).__name__)
    if cell_kind is None:
        raise ConversionError(
            "from_keras converts keras.layers.LSTM, GRU, SimpleRNN or Bidirectional around them, "
            f"got {type(keras_layer).__name__}"
        )
    if not keras_layer.built:
        raise ConversionError(f"Keras layer {keras_layer.name!r} is not built: call it on an input first")
    cell = keras_layer.cell
    activation = _activation_name(cell.activation)
    if activation != "tanh":
        raise ConversionError(f"Keras {keras_layer.name!r}: activation={activation!r} unsupported; only 'tanh'")
    if cell_kind != "simple_rnn":
        recurrent_activation = _activation_name(cell.recurrent_activation)
        if recurrent_activation != "sigmoid":
            raise ConversionError(
                f"Keras {keras_layer.name!r}: recurrent_activation={recurrent_activation!r} unsupported; only 'sigmoid'"
            )
    if cell_kind == "gru" and not cell.reset_after:
        raise ConversionError(
            f"Keras GRU {keras_layer.name!r} has reset_after=False; only reset_after=True (the default) converts"
        )

    to_numpy = keras.ops.convert_to_numpy
    kernel = to_numpy(cell.kernel)
    recurrent_kernel = to_numpy(cell.recurrent_kernel)
    bias = to_numpy(cell.bias) if cell.use_bias else None
    hidden = recurrent_kernel.shape[0]
    target = CELLS[cell_kind](kernel.shape[0], hidden, use_bias=cell.use_bias, rngs=nnx.Rngs(0))
    if cell_kind == "gru":
        # Keras orders GRU columns [z | r | h]; ours (and PyTorch's) are [r | z | n].
        def reorder(matrix):
            z, r, h = np.split(matrix, 3, axis=-1)
            return np.concatenate([r, z, h], axis=-1)

        kernel, recurrent_kernel = reorder(kernel), reorder(recurrent_kernel)
        if bias is not None:
            _set(target.bias, reorder(bias[0]), "bias[0]")
            _set(target.recurrent_bias, reorder(bias[1]), "bias[1]")
    elif bias is not None:
        _set(target.bias, bias, "bias")
    _set(target.input_kernel, kernel, "kernel")
    _set(target.recurrent_kernel, recurrent_kernel, "recurrent_kernel")
    return RNN(target, reverse=reverse)


def from_keras(keras_layer) -> StackedRNN:
    """Converts a built Keras 3 ``LSTM``, ``GRU``, ``SimpleRNN`` or ``Bidirectional`` (merge_mode='concat').

    Inputs are batch-major ``[batch, time, features]`` as in Keras. Outputs are in original time order
    also for ``go_backwards=True`` layers (Keras returns those reversed).
    """
    if type(keras_layer).__name__ == "Bidirectional":
        if keras_layer.merge_mode != "concat":
            raise ConversionError(
                f"Keras Bidirectional merge_mode={keras_layer.merge_mode!r} unsupported; only 'concat'"
            )
        layer = Bidirectional(
            _keras_rnn(keras_layer.forward_layer, reverse=False),
            _keras_rnn(keras_layer.backward_layer, reverse=True),
        )
    else:
        layer = _keras_rnn(keras_layer, reverse=bool(getattr(keras_layer, "go_backwards", False)))
    return StackedRNN([layer])
