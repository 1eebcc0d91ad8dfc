"""Predicts the sentiment of statements, one per line, with a trained checkpoint.

python predict.py --workdir DIR --input reviews.txt [--output predictions.txt] [--format txt|jsonl|csv]
                  [--threshold 0.5] [--step N]
python predict.py --model EXPORTED --input reviews.txt ...   (a folder written by export.py: no Flax, no orbax)
"""

import sys
from pathlib import Path

from lstm_jax.sentiment.process import startup  # first: Ctrl-C while the libraries load exits quietly

startup.one_cpu_device_per_core()  # before JAX starts: each core predicts its share of a batch

from absl import flags, logging  # noqa: E402

from lstm_jax.sentiment.config import check_prediction_setting  # noqa: E402
from lstm_jax.sentiment.deploy.predictor import check_choice, load  # noqa: E402  (no Flax until a checkpoint loads)
from lstm_jax.sentiment.deploy.statements import FORMATS, predict_file  # noqa: E402
from lstm_jax.sentiment.errors import UserError, exit_on_user_error, interrupt_on_sigterm  # noqa: E402
from lstm_jax.sentiment.files import SafeOutput  # noqa: E402
from lstm_jax.sentiment.process.cli import enable_compilation_cache, require_local, run  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory holding the checkpoints.")
_MODEL = flags.DEFINE_string("model", None, "A folder written by export.py, instead of --workdir.")
_INPUT = flags.DEFINE_string("input", None, "Text file with one statement per line; '-' reads stdin.")
_OUTPUT = flags.DEFINE_string("output", "predictions.txt", "Where to write the predictions; '-' writes stdout.")
_FORMAT = flags.DEFINE_enum("format", "txt", FORMATS, "txt (the tutorial's blocks), jsonl or csv.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "Probability of positive at or above which a statement is positive "
                                 "(with --model: default the exported threshold).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to use (default: the best by validation accuracy).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Statements per prediction batch.")


def _start_jax() -> None:
    """JAX, and for a checkpoint Flax and orbax, imported where Ctrl-C exits quietly: inside a C extension's
    import a KeyboardInterrupt aborts the process with a C++ traceback."""
    with startup.quiet_while_importing():
        enable_compilation_cache("")
        if _WORKDIR.value:
            import lstm_jax.sentiment.deploy.predict  # noqa: F401


@exit_on_user_error
def main(argv):
    logging.set_verbosity(logging.FATAL)  # orbax warns that read-only managers do not save
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    check_choice(_WORKDIR.value, _MODEL.value, _STEP.value)
    if not _INPUT.value:
        raise UserError("--input is required, e.g. --input reviews.txt (one statement per line)")
    require_local(workdir=_WORKDIR.value, model=_MODEL.value, input=_INPUT.value, output=_OUTPUT.value)
    check_prediction_setting("batch_size", _BATCH_SIZE.value)
    threshold = _THRESHOLD.value if flags.FLAGS["threshold"].present or _WORKDIR.value else None
    if threshold is not None:
        check_prediction_setting("threshold", threshold)
    interrupt_on_sigterm()  # a scheduler's SIGTERM stops like Ctrl-C: no partial output, no temporary file
    # Refuse a bad output before loading anything; one inside the model it reads would damage the model.
    SafeOutput(_OUTPUT.value, inputs=(_INPUT.value,), folders=(_MODEL.value or _WORKDIR.value,))
    predictor = load(workdir=_WORKDIR.value, model=_MODEL.value, step=_STEP.value, batch_size=_BATCH_SIZE.value,
                     threshold=threshold, before_jax=_start_jax)  # fmt: skip
    stats = predict_file(predictor, _INPUT.value, _OUTPUT.value, _FORMAT.value, predictor.threshold)
    notes = [f"{stats['empty_lines']} empty lines skipped"]
    if stats["invalid_utf8_lines"]:
        notes.append(f"{stats['invalid_utf8_lines']} lines had invalid UTF-8 bytes, replaced by U+FFFD")
    where = "standard output" if _OUTPUT.value == "-" else Path(_OUTPUT.value).resolve()
    print(f"wrote {stats['statements']} predictions to {where} ({'; '.join(notes)})", file=sys.stderr)


if __name__ == "__main__":
    run(main)
