"""The sentiment classifier as an ONNX graph, written node by node from its weights (the ``[onnx]`` extra).

Each recurrent layer becomes ONNX's own operator, so ONNX Runtime runs its fused kernel rather than a loop:

* ``LSTMCell`` / ``PeepholeLSTMCell`` -> ``LSTM``: ONNX orders the gate blocks ``[i | o | f | c]`` (ours
  ``[i | f | g | o]``) and keeps an input and a recurrent bias (ours is one: the recurrent one is zero);
  peepholes ``P = [p_i | p_o | p_f]``, the output gate looking at the new cell as ours does;
* ``GRUCell`` -> ``GRU`` with ``linear_before_reset=1`` (our reset-after form), gates ``[z | r | h]``
  (ours ``[r | u | n]``), both biases;
* ``SimpleRNNCell`` -> ``RNN`` with ``tanh``.

Subword embeddings and the static embedding channel depend on the token id alone, so they are folded into the
one embedding table the graph gathers from (:func:`_input_table`).

The n-gram scorer (``ngrams/table``) becomes plain integer and gather operators: the same multiplicative hash of
token-id pairs in int64 arithmetic, a repeat mask from an equality matrix, and a sum of the table's values.

Exact lengths: every operator gets ``sequence_lens``, so each row stops at its last real token and the backward
direction of a bidirectional layer starts there (ONNX Runtime reverses each row's real steps). Rows of length 0
run one step (the operators need at least one) and are then given the zero state back, as our layers do. Padded
outputs are set to zero before the next layer and the pooling.

Not expressible with these operators (export them as StableHLO instead): the layer-normalised LSTM, the xLSTM
cells (exponential gating with a stabiliser state) and bfloat16 models.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from lstm_jax.sentiment.data.subwords import NO_NGRAM
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.ngrams import HASH_MULTIPLIERS

OPSET = 17
OPERATORS = {"lstm": "LSTM", "peephole_lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}
GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}  # ONNX's gate blocks, as indices of ours


def check_exportable(kwargs: dict) -> None:
    """A one-line error naming what in these model settings ONNX's operators cannot express."""
    reasons = []
    if kwargs["cell"] not in OPERATORS:
        reasons.append(f"cell {kwargs['cell']!r} has no ONNX operator (ONNX has {', '.join(OPERATORS)})")
    if kwargs.get("dtype", "float32") != "float32":
        reasons.append(f"the model computes in {kwargs['dtype']}; the ONNX operators would run float32")
    if reasons:
        raise UserError(f"this model cannot be exported to ONNX: {'; '.join(reasons)}; use --format stablehlo")


class _Graph:
    """Nodes and constants under generated names."""

    def __init__(self):
        from onnx import numpy_helper

        self._from_array = numpy_helper.from_array
        self.nodes, self.initializers, self._count = [], [], 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=None) -> str:
        name = self._name("const")
        self.initializers.append(self._from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes):
        from onnx import helper

        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names


def _reorder(matrix: np.ndarray, order: list[int], hidden: int) -> np.ndarray:
    """Column blocks of ``hidden`` in ONNX's gate order (``matrix <[..., G*H]>``)."""
    return np.concatenate([matrix[..., k * hidden : (k + 1) * hidden] for k in order], axis=-1)


def _direction_weights(operator: str, weights: dict, prefix: str, hidden: int) -> dict:
    """One direction's W <[G*H, in]>, R <[G*H, H]>, B <[2*G*H]> (and P <[3H]> for peepholes) in ONNX's layout."""
    order = GATE_ORDER[operator]
    width = len(order) * hidden
    bias = weights.get(prefix + "bias", np.zeros(width, np.float32))
    recurrent_bias = weights.get(prefix + "recurrent_bias", np.zeros(width, np.float32))
    result = {
        "W": _reorder(weights[prefix + "input_kernel"], order, hidden).T,
        "R": _reorder(weights[prefix + "recurrent_kernel"], order, hidden).T,
        "B": np.concatenate([_reorder(bias, order, hidden), _reorder(recurrent_bias, order, hidden)]),
    }
    if prefix + "peephole_weights" in weights:
        p_i, p_f, p_o = weights[prefix + "peephole_weights"]
        result["P"] = np.concatenate([p_i, p_o, p_f])
    return result


def _recurrent_layer(graph: _Graph, operator: str, directions: list[dict], x: str, seq_lens: str, hidden: int):
    """(Y <[T, D, B, H]>, Y_h <[D, B, H]>) of one layer over time-major ``x``."""
    stacked = {key: np.stack([d[key] for d in directions]).astype(np.float32) for key in directions[0]}
    inputs = [x, graph.const(stacked["W"]), graph.const(stacked["R"]), graph.const(stacked["B"]), seq_lens]
    if "P" in stacked:
        inputs += ["", "", graph.const(stacked["P"])]  # no initial h or c: zeros
    attributes = {"hidden_size": hidden, "direction": "bidirectional" if len(directions) == 2 else "forward"}
    if operator == "GRU":
        attributes["linear_before_reset"] = 1
    return graph.op(operator, *inputs, outputs=2, **attributes)


def _input_table(weights: dict, prefix: str = "embedder/") -> np.ndarray:
    """``<float32>[vocab, E or 2E]``: what the classifier's :class:`.Embedder` gives each token id, as one table.
    Subwords and the static channel depend on the token id alone, so they fold into it."""
    table = weights[prefix + "embed/embedding"].astype(np.float32)
    if prefix + "embed_rows" in weights:  # the trained rows, over the frozen table's
        slots = weights[prefix + "row_slots"].astype(np.int64)
        table = np.where((slots >= 0)[:, None], weights[prefix + "embed_rows"][np.maximum(slots, 0)], table)
    if prefix + "subword_ids" in weights:
        ids = weights[prefix + "subword_ids"].astype(np.int64)  # [vocab, SLOTS]
        vectors = weights[prefix + "subword_embed/embedding"]
        total, count = np.zeros_like(table), np.zeros((len(table), 1), np.float32)
        for slot in ids.T:  # one slot at a time: [vocab, SLOTS, E] at once would be a gigabyte for GloVe's vocabulary
            filled = (slot != NO_NGRAM)[:, None]
            total += np.where(filled, vectors[np.maximum(slot, 0)], 0.0)
            count += filled
        table = table + total / np.maximum(count, 1)
    if prefix + "static/embedding" in weights:
        table = np.concatenate([table, weights[prefix + "static/embedding"]], axis=-1)
    return table


def _recurrent_logit(graph: _Graph, kwargs: dict, weights: dict, shared: dict) -> str:
    """The recurrent classifier's logit <float32>[B] (the n-gram scorer's is added beside it)."""
    operator, hidden = OPERATORS[kwargs["cell"]], kwargs["hidden_size"]
    x = graph.op("Gather", graph.const(_input_table(weights), np.float32), "tokens")  # [B, T, E or 2E]
    x = graph.op("Transpose", x, perm=[1, 0, 2])  # [T, B, E]
    names = ["forward_rnn/", "backward_rnn/"] if kwargs["bidirectional"] else [""]
    zero = graph.const(np.float32(0.0))
    for layer in range(kwargs["num_layers"]):
        directions = [_direction_weights(operator, weights, f"encoder/layers/{layer}/{name}cell/", hidden)
                      for name in names]  # fmt: skip
        y, final = _recurrent_layer(graph, operator, directions, x, shared["seq_lens"], hidden)
        y = graph.op("Reshape", graph.op("Transpose", y, perm=[0, 2, 1, 3]), graph.const([0, 0, -1], np.int64))
        x = graph.op("Where", shared["real_tb1"], y, zero)  # [T, B, D*H], zero past each length
    if kwargs["pooling"] == "last":
        features = graph.op("Reshape", graph.op("Transpose", final, perm=[1, 0, 2]), graph.const([0, -1], np.int64))
    else:
        masked = graph.op("Where", shared["real_tb1"], x, graph.const(np.float32(-np.inf)))
        features = graph.op("ReduceMax", masked, axes=[0], keepdims=0)  # [B, F]
        if kwargs["pooling"] == "mean_max":
            total = graph.op("ReduceSum", x, graph.const([0], np.int64), keepdims=0)
            mean = graph.op("Div", total, shared["lengths_b1"])
            features = graph.op("Concat", mean, features, axis=-1)
    features = graph.op("Where", shared["nonempty_b1"], features, zero)  # length 0: the zero state / zero pooling
    logit = graph.op("Add", graph.op("MatMul", features, graph.const(weights["head/linear/kernel"], np.float32)),
                     graph.const(weights["head/linear/bias"], np.float32))  # fmt: skip
    return graph.op("Squeeze", logit, graph.const([1], np.int64))


def _ngram_logit(graph: _Graph, weights: dict, shared: dict, order: int) -> str:
    """The n-gram scorer's logit <float32>[B] (see :func:`.ngrams.ngram_ids`): the same hash in int64 arithmetic
    (``(a*K1 + b*K2 [+ c*K3]) mod 2**32``, then its top bits), unigrams paired with 0, repeats counted once."""
    int64, axis1 = 7, graph.const([1], np.int64)
    table = weights["ngrams/table"]
    words = graph.op("Cast", "tokens", to=int64)  # [B, T]
    begin, end = graph.const([0], np.int64), graph.const([np.iinfo(np.int64).max], np.int64)

    def shifted(start: int, stop: int) -> str:  # words[:, start : T - stop]
        return graph.op("Slice", words, graph.const([start], np.int64),
                        graph.const([-stop], np.int64) if stop else end, axis1)  # fmt: skip

    def times(tensor: str, k: int) -> str:
        return graph.op("Mul", tensor, graph.const(np.int64(HASH_MULTIPLIERS[k])))

    hashed = [times(words, 0)]  # unigrams: the bigram (a, 0), whose second term is 0
    for n in range(2, order + 1):
        terms = [times(shifted(k, n - 1 - k), k) for k in range(n)]
        hashed.append(functools.reduce(lambda a, b: graph.op("Add", a, b), terms))
    hashed = graph.op("Mod", graph.op("Concat", *hashed, axis=1), graph.const(np.int64(1 << 32)))  # [B, N]
    ids = graph.op("Div", hashed, graph.const(np.int64((1 << 32) // len(table))))
    zero, one, time = graph.const(np.int32(0)), graph.const(np.int32(1)), shared["time"]
    # [N]: the last token each n-gram needs: 0..T-1 for unigrams, 1..T-1 for bigrams, 2..T-1 for trigrams
    position = graph.op("Concat", *[graph.op("Range", graph.const(np.int32(n - 1)), graph.op("Max", time,
                        graph.const(np.int32(n - 1))), one) for n in range(1, order + 1)], axis=0)  # fmt: skip
    real = graph.op("Less", graph.op("Unsqueeze", position, begin),
                    graph.op("Unsqueeze", shared["lengths"], axis1))  # [B, N]  # fmt: skip
    index = graph.op("Range", zero, graph.op("Cast", graph.op("Gather", graph.op("Shape", position),
                     graph.const(np.int64(0))), to=6), one)  # fmt: skip
    earlier = graph.op("Less", graph.op("Unsqueeze", index, begin),
                       graph.op("Unsqueeze", index, axis1))  # [N, N]: j < i  # fmt: skip
    same = graph.op("Equal", graph.op("Unsqueeze", ids, graph.const([2], np.int64)), graph.op("Unsqueeze", ids, axis1))
    repeat = graph.op("And", graph.op("And", same, earlier), graph.op("Unsqueeze", real, axis1))
    repeated = graph.op("ReduceMax", graph.op("Cast", repeat, to=6), axes=[2], keepdims=0)  # [B, N]
    counted = graph.op("And", real, graph.op("Not", graph.op("Cast", repeated, to=9)))
    values = graph.op("Where", counted, graph.op("Gather", graph.const(table, np.float32), ids),
                      graph.const(np.float32(0.0)))  # fmt: skip
    total = graph.op("ReduceSum", values, axis1, keepdims=0)
    return graph.op("Add", total, graph.const(np.asarray(weights["ngrams/bias"], np.float32)))


def _shared(graph: _Graph) -> dict:
    """Lengths clipped to [0, T] and the masks the graph uses."""
    int32 = 6  # onnx.TensorProto.INT32, FLOAT = 1, BOOL = 9
    time = graph.op("Cast", graph.op("Gather", graph.op("Shape", "tokens"), graph.const(np.int64(1))), to=int32)
    lengths = graph.op("Min", graph.op("Max", "lengths", graph.const(np.int32(0))), time)
    steps = graph.op("Range", graph.const(np.int32(0)), time, graph.const(np.int32(1)))  # [T]
    real_tb = graph.op("Less", graph.op("Unsqueeze", steps, graph.const([1], np.int64)),
                       graph.op("Unsqueeze", lengths, graph.const([0], np.int64)))  # [T, B]  # fmt: skip
    lengths_b = graph.op("Cast", graph.op("Max", lengths, graph.const(np.int32(1))), to=1)
    return {
        "time": time,
        "lengths": lengths,
        "seq_lens": graph.op("Max", lengths, graph.const(np.int32(1))),
        "real_tb1": graph.op("Unsqueeze", real_tb, graph.const([2], np.int64)),
        "nonempty_b1": graph.op("Unsqueeze", graph.op("Greater", lengths, graph.const(np.int32(0))),
                                graph.const([1], np.int64)),  # fmt: skip
        "lengths_b1": graph.op("Unsqueeze", lengths_b, graph.const([1], np.int64)),
    }


def build(kwargs: dict, weights: dict[str, np.ndarray]):
    """The ONNX model ``tokens <int32>[batch, time], lengths <int32>[batch] -> probabilities <float32>[batch]``."""
    from onnx import TensorProto, helper

    check_exportable(kwargs)
    graph = _Graph()
    shared = _shared(graph)
    logit = _recurrent_logit(graph, kwargs, weights, shared)
    if "ngrams/table" in weights:
        logit = graph.op("Add", logit, _ngram_logit(graph, weights, shared, kwargs.get("ngram_order", 2)))
    graph.nodes.append(helper.make_node("Sigmoid", [logit], ["probabilities"]))
    onnx_graph = helper.make_graph(
        graph.nodes,
        "lstm_jax_sentiment",
        [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", "time"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])],  # fmt: skip
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch"])],
        graph.initializers,
    )
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstm_jax")


def write(kwargs: dict, weights: dict[str, np.ndarray], path: Path) -> None:
    import onnx

    model = build(kwargs, weights)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
