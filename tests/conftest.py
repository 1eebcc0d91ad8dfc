"""Shared test settings: Keras runs on the JAX backend; tests stay on one CPU device by default."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
