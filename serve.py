"""Serves predictions over HTTP: a JSON API, Prometheus metrics and a web page (the [serve] extra).

python serve.py --model exported/default [--host 127.0.0.1] [--port 8000]      (a folder written by export.py)
python serve.py --workdir checkpoints/default [--step N] ...                    (a checkpoint)

POST /predict {"statements": ["..."], "explain": false}; GET /health, /model, /metrics, / (the page).
SIGTERM (or Ctrl-C) finishes the requests in flight, then exits 0.
"""

from lstm_jax.sentiment.process import startup  # first: Ctrl-C while the libraries load exits quietly

startup.one_cpu_device_per_core()  # before JAX starts: each core predicts its share of a batch

from absl import flags, logging  # noqa: E402

from lstm_jax.sentiment.config import check_prediction_setting  # noqa: E402
from lstm_jax.sentiment.deploy.predictor import check_choice  # noqa: E402
from lstm_jax.sentiment.errors import UserError, exit_on_user_error  # noqa: E402
from lstm_jax.sentiment.process.cli import require_local, run  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory holding the checkpoints.")
_MODEL = flags.DEFINE_string("model", None, "A folder written by export.py, instead of --workdir.")
_FORMAT = flags.DEFINE_enum("format", None, ["onnx", "stablehlo"], "With --model: which format to run "
                            "(default: the fastest one installed).")
_STEP = flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the best).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Probability of positive at or above which a statement is "
                                "positive (default: 0.5, or the exported threshold with --model).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Most statement rows in one model call (micro-batch).")
_MAX_WAIT_MS = flags.DEFINE_float("max_wait_ms", 0.0, "How long the first request of a micro-batch waits for others "
                                   "(0: a batch is what queued while the previous one ran).")
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest request body accepted.")
_MAX_STATEMENTS = flags.DEFINE_integer("max_statements", 256, "Most statements in one request.")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 5000, "Most characters in one statement.")
_MAX_EXPLAINED = flags.DEFINE_integer("max_explained", 16, "Most statements in one request with explain=true.")
_CACHE = flags.DEFINE_string("compilation_cache", "", "JAX compilation cache folder ('' = default, 'off' = none).")


def _check_flags() -> None:
    check_choice(_WORKDIR.value, _MODEL.value, _STEP.value, _FORMAT.value)
    require_local(workdir=_WORKDIR.value, model=_MODEL.value)
    if not 0 <= _PORT.value <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {_PORT.value}")
    if _THRESHOLD.value is not None:
        check_prediction_setting("threshold", _THRESHOLD.value)
    if not 1 <= _MAX_BATCH.value <= 4096:
        raise UserError(f"--max_batch must be between 1 and 4096, got {_MAX_BATCH.value}")
    if not 0.0 <= _MAX_WAIT_MS.value <= 1000.0:
        raise UserError(f"--max_wait_ms must be between 0 and 1000, got {_MAX_WAIT_MS.value}")
    for flag in (_MAX_BODY, _MAX_STATEMENTS, _MAX_CHARS, _MAX_EXPLAINED):
        if flag.value < 1:
            raise UserError(f"--{flag.name} must be at least 1, got {flag.value}")


@exit_on_user_error
def main(argv):
    logging.set_verbosity(logging.FATAL)  # orbax warns that read-only managers do not save
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    _check_flags()
    try:
        with startup.quiet_while_importing():
            from lstm_jax.sentiment.serve import app as serving
    except ImportError as error:
        raise UserError(f"serving needs {error.name}: pip install 'lstm_jax[serve]'") from None
    service = serving.load_service(
        workdir=_WORKDIR.value, model=_MODEL.value, model_format=_FORMAT.value, step=_STEP.value,
        threshold=_THRESHOLD.value, cache=_CACHE.value, max_batch=_MAX_BATCH.value, max_wait=_MAX_WAIT_MS.value / 1000,
        limits=serving.Limits(_MAX_BODY.value, _MAX_STATEMENTS.value, _MAX_CHARS.value, _MAX_EXPLAINED.value),
    )  # fmt: skip
    serving.serve(service, _HOST.value, _PORT.value)


if __name__ == "__main__":
    run(main)
