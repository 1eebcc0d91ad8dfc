"""NumPy reference implementations of the cells, written from the papers' equations (float64)."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params(cell):
    """The cell's parameters as float64 NumPy arrays."""
    out = {
        "W_x": np.asarray(cell.input_kernel[...], np.float64),
        "W_h": np.asarray(cell.recurrent_kernel[...], np.float64),
        "b": np.zeros(cell.input_kernel[...].shape[1]) if cell.bias is None else np.asarray(cell.bias[...], np.float64),
    }
    if hasattr(cell, "peephole_weights"):
        out["p"] = np.asarray(cell.peephole_weights[...], np.float64)
    if hasattr(cell, "recurrent_bias") and cell.recurrent_bias is not None:
        out["b_h"] = np.asarray(cell.recurrent_bias[...], np.float64)
    return out


def lstm_step(p, state, x):
    c, h = state
    H = h.shape[-1]
    W_x, W_h, b = p["W_x"], p["W_h"], p["b"]

    def block(k):
        return x @ W_x[:, k * H : (k + 1) * H] + h @ W_h[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    i, f, g, o = sigmoid(block(0)), sigmoid(block(1)), np.tanh(block(2)), sigmoid(block(3))
    c = f * c + i * g
    h = o * np.tanh(c)
    return (c, h), h


def peephole_step(p, state, x):
    c_prev, h = state
    H = h.shape[-1]
    W_x, W_h, b, (p_i, p_f, p_o) = p["W_x"], p["W_h"], p["b"], p["p"]

    def block(k):
        return x @ W_x[:, k * H : (k + 1) * H] + h @ W_h[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    i = sigmoid(block(0) + p_i * c_prev)
    f = sigmoid(block(1) + p_f * c_prev)
    c = f * c_prev + i * np.tanh(block(2))
    o = sigmoid(block(3) + p_o * c)
    h = o * np.tanh(c)
    return (c, h), h


def gru_step(p, h, x):
    H = h.shape[-1]
    W_x, W_h, b = p["W_x"], p["W_h"], p["b"]
    b_h = p.get("b_h", np.zeros(3 * H))

    def xs(k):
        return x @ W_x[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    def hs(k):
        return h @ W_h[:, k * H : (k + 1) * H] + b_h[k * H : (k + 1) * H]

    r = sigmoid(xs(0) + hs(0))
    u = sigmoid(xs(1) + hs(1))
    n = np.tanh(xs(2) + r * hs(2))
    h = (1 - u) * n + u * h
    return h, h


def simple_step(p, h, x):
    h = np.tanh(x @ p["W_x"] + h @ p["W_h"] + p["b"])
    return h, h


STEPS = {"lstm": lstm_step, "peephole_lstm": peephole_step, "gru": gru_step, "simple_rnn": simple_step}


def initial_state(name, hidden):
    zeros = np.zeros(hidden)
    return (zeros, zeros) if name in ("lstm", "peephole_lstm") else zeros


def run_sequence(name, cell, x, reverse=False):
    """Runs one unpadded sequence x <[time, in]>; returns outputs <[time, H]> (original order) and final state."""
    p, step = params(cell), STEPS[name]
    state, outputs = initial_state(name, cell.hidden_features), []
    order = range(len(x) - 1, -1, -1) if reverse else range(len(x))
    for t in order:
        state, y = step(p, state, np.asarray(x[t], np.float64))
        outputs.append(y)
    if reverse:
        outputs = outputs[::-1]
    return np.stack(outputs) if outputs else np.zeros((0, cell.hidden_features)), state
