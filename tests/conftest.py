"""Shared test settings: Keras runs on the JAX backend; tests stay on one CPU device by default."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import csv  # noqa: E402
import importlib.util  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POSITIVE = "great wonderful superb moving brilliant fun charming delightful".split()
NEGATIVE = "awful boring dull terrible mess tedious bland painful".split()
FILLER = "the movie film plot actor scene story it was and a of".split()


def load_config(name: str = "smoke", **overrides):
    """configs/<name>.py's locked config with overrides (unknown keys fail, as on the command line)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def write_reviews(path: Path, count: int, seed: int) -> Path:
    """A CSV of `count` short reviews whose label shows in two sentiment words."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(count):
            label = index % 2
            words = rng.choices(FILLER, k=6) + rng.choices(POSITIVE if label else NEGATIVE, k=2)
            rng.shuffle(words)
            writer.writerow([" ".join(words), "positive" if label else "negative"])
    return path


COMPILED_MEMORY_LIMIT_MB = 450  # a test worker whose memory grew this much since its last release releases again
_after_release_mb = 0  # the worker's resident memory after its last release: imported libraries, fixtures


def _resident_mb() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except OSError:  # not Linux
        return 0


def _release_memory() -> None:
    """Drops JAX's compiled programs and gives freed memory back to the system (glibc keeps what the compiler
    freed in its arenas: 700 MB after test_cudnn alone)."""
    import ctypes
    import gc

    import jax

    global _after_release_mb
    jax.clear_caches()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    _after_release_mb = _resident_mb()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs_per_module():
    """Each test module compiles its own shapes: release them after the module (the suite grew to 6 GB)."""
    yield
    _release_memory()


@pytest.fixture(autouse=True)
def _release_compiled_programs_when_large():
    """Within a module too, once a worker's compiled programs hold more than COMPILED_MEMORY_LIMIT_MB
    (test_recurrent's cases grew one worker from 0.9 to 3 GB); measured from the last release, as the libraries
    a worker has imported (torch, keras, onnxruntime) stay."""
    yield
    if _after_release_mb and _resident_mb() > _after_release_mb + COMPILED_MEMORY_LIMIT_MB:
        _release_memory()


@pytest.fixture(scope="session")
def review_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reviews")
    return write_reviews(folder / "train.csv", 64, seed=0), write_reviews(folder / "test.csv", 24, seed=1)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, review_files):
    """A smoke run trained once for the prediction tests."""
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    workdir = tmp_path_factory.mktemp("run")
    train, test = review_files
    config = load_config("smoke", train_path=str(train), test_path=str(test), num_epochs=6)
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(autouse=True)
def _memory_log(request):
    """With LSTM_JAX_TEST_MEMORY_LOG=FILE, each test's peak memory so far (this process, and the largest child
    process) is appended to FILE: the way to find what drives the suite's peak (README: test suite)."""
    yield
    if path := os.environ.get("LSTM_JAX_TEST_MEMORY_LOG"):
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        with open(path, "a") as log:
            log.write(f"{os.getpid()} {own} {children} {request.node.nodeid}\n")
