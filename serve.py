"""Serves predictions over HTTP: a JSON API, Prometheus metrics and a web page (the [serve] extra).

python serve.py --model exported/default [--host 127.0.0.1] [--port 8000]      (a folder written by export.py)
python serve.py --workdir checkpoints/default [--step N] ...                    (a checkpoint)

POST /predict {"statements": ["..."], "explain": false} (Content-Type: application/json); GET /livez, /readyz
(or /health), /model, /metrics, / (the page). Off loopback a token is required (--token_file, or --insecure);
TLS with --ssl_certfile and --ssl_keyfile. SIGTERM, Ctrl-C or SIGHUP finishes the requests in flight, then
exits 0.
"""

from lstm_jax.sentiment.process import startup  # first: Ctrl-C while the libraries load exits quietly

startup.one_cpu_device_per_core()  # before JAX starts: each core predicts its share of a batch

from absl import flags, logging  # noqa: E402

from lstm_jax.sentiment.config import check_prediction_setting  # noqa: E402
from lstm_jax.sentiment.deploy.predictor import check_choice  # noqa: E402
from lstm_jax.sentiment.errors import UserError, exit_on_user_error  # noqa: E402
from lstm_jax.sentiment.process.cli import require_local, run  # noqa: E402
from lstm_jax.sentiment.serve import server  # noqa: E402

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
_MAX_QUEUED = flags.DEFINE_integer("max_queued_rows", 1 << 14, "Most model rows waiting; past it requests get 503 "
                                   "with Retry-After.")
_MAX_URL = flags.DEFINE_integer("max_url_bytes", 8192, "Longest request line (414 past it).")
_MAX_HEAD = flags.DEFINE_integer("max_head_bytes", 16384, "Largest request head: line and headers (431 past it).")
_TIMEOUT = flags.DEFINE_float("request_timeout_s", 5.0, "Seconds a client has to send a whole request (408 past it).")
_MAX_CONNECTIONS = flags.DEFINE_integer("max_connections", 512, "Most open connections (503 past it; fewer if "
                                        "ulimit -n is lower).")
_ALLOWED_HOSTS = flags.DEFINE_list("allowed_hosts", None, "Host header names accepted (default: the --host address, "
                                   "and localhost on loopback; '*': any).")
_TOKEN_FILE = flags.DEFINE_string("token_file", None, "File holding a bearer token every API request must send "
                                  "(Authorization: Bearer ...); required off loopback unless --insecure.")
_INSECURE = flags.DEFINE_bool("insecure", False, "Serve a non-loopback --host without a token.")
_CERTFILE = flags.DEFINE_string("ssl_certfile", None, "TLS certificate (PEM), with --ssl_keyfile: serve HTTPS.")
_KEYFILE = flags.DEFINE_string("ssl_keyfile", None, "TLS private key (PEM), with --ssl_certfile.")
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
    for flag in (_MAX_BODY, _MAX_STATEMENTS, _MAX_CHARS, _MAX_EXPLAINED, _MAX_QUEUED, _MAX_URL, _MAX_HEAD,
                 _MAX_CONNECTIONS):  # fmt: skip
        if flag.value < 1:
            raise UserError(f"--{flag.name} must be at least 1, got {flag.value}")
    if not 0.1 <= _TIMEOUT.value <= 3600:
        raise UserError(f"--request_timeout_s must be between 0.1 and 3600, got {_TIMEOUT.value}")
    if not (_TOKEN_FILE.value or _INSECURE.value or server.is_loopback(_HOST.value.strip("[]"))):
        raise UserError(f"--host {_HOST.value} is reachable from other machines: give --token_file FILE (clients "
                        "send Authorization: Bearer <token>), or --insecure to serve without one")  # fmt: skip
    server.check_tls(_CERTFILE.value, _KEYFILE.value)


def _allowed_hosts() -> set[str] | None:
    if _ALLOWED_HOSTS.value is None:
        return server.default_allowed_hosts(_HOST.value)
    return None if "*" in _ALLOWED_HOSTS.value else {name.strip().lower() for name in _ALLOWED_HOSTS.value}


@exit_on_user_error
def main(argv):
    logging.set_verbosity(logging.FATAL)  # orbax warns that read-only managers do not save
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    _check_flags()
    token = server.read_token(_TOKEN_FILE.value) if _TOKEN_FILE.value else None
    try:
        with startup.quiet_while_importing():
            from lstm_jax.sentiment.serve import app as serving

            if _WORKDIR.value or _FORMAT.value == "stablehlo":  # JAX (and Flax): C extensions, imported quietly
                import jax  # noqa: F401

                if _WORKDIR.value:
                    import lstm_jax.sentiment.deploy.predict  # noqa: F401
    except ImportError as error:
        raise UserError(f"serving needs {error.name}: pip install 'lstm_jax[serve]'") from None
    service = serving.load_service(
        workdir=_WORKDIR.value, model=_MODEL.value, model_format=_FORMAT.value, step=_STEP.value,
        threshold=_THRESHOLD.value, cache=_CACHE.value, max_batch=_MAX_BATCH.value, max_wait=_MAX_WAIT_MS.value / 1000,
        limits=serving.Limits(_MAX_BODY.value, _MAX_STATEMENTS.value, _MAX_CHARS.value, _MAX_EXPLAINED.value,
                              _MAX_QUEUED.value),
    )  # fmt: skip
    connections = server.connection_limit(_MAX_CONNECTIONS.value)
    bounds = server.Bounds(_MAX_URL.value, _MAX_HEAD.value, _TIMEOUT.value, connections)
    tls = (_CERTFILE.value, _KEYFILE.value) if _CERTFILE.value else None
    serving.serve(service, _HOST.value, _PORT.value, bounds, _allowed_hosts(), token, tls)


if __name__ == "__main__":
    run(main)
