"""Run in a virtual environment holding only `pip install .`: the library imports and runs without the job's extras."""

import importlib.util
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

import lstm_jax

JOB_ONLY = ("ml_collections", "matplotlib", "tensorboardX", "tqdm", "fastapi", "onnxruntime", "torch")
present = [name for name in JOB_ONLY if importlib.util.find_spec(name) is not None]
assert not present, f"the library's install pulled the job's dependencies: {present}"

layer = lstm_jax.make_recurrent("lstm", 4, 8, bidirectional=True, rngs=nnx.Rngs(0))
inputs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4)), jnp.float32)
outputs, _ = layer(inputs, lengths=jnp.array([5, 3]))
assert outputs.shape == (2, 5, 16), outputs.shape
assert not np.asarray(outputs[1, 3:]).any(), "padded steps must be zero"
# The native CPU kernel compiles from the installed source where a compiler is; without one the layer falls back.
expected = "native" if shutil.which("c++") or shutil.which("g++") else "fused"
assert layer.layers[0].forward_rnn.backend == expected, (layer.layers[0].forward_rnn.backend, expected)
if "--without-compiler" not in sys.argv:
    env = {**os.environ, "PATH": "", "CXX": "", "LSTM_JAX_CACHE": os.path.join(os.getcwd(), ".venv-lib", "no-cache")}
    subprocess.run([sys.executable, __file__, "--without-compiler"], env=env, check=True)
print(f"the library alone: ok ({'no compiler: ' if '--without-compiler' in sys.argv else ''}{expected} LSTM)")
