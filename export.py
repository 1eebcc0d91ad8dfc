"""Exports a trained checkpoint as a self-contained folder that predicts without the training stack.

python export.py --workdir DIR --output OUT [--format stablehlo|onnx|stablehlo,onnx] [--step N] [--force]
                 [--threshold 0.5]

OUT then holds the model (StableHLO via jax.export, symbolic batch and time; and/or ONNX), its vocabulary and
tokenizer settings, the threshold and manifest.json. Use it with:
    python predict.py --model OUT --input reviews.txt
    python -c "import lstm_jax.deploy as d; print(d.load('OUT').predict(['a fine film']))"
"""

import sys

from absl import flags, logging

from lstm_jax.sentiment.deploy.export import FORMATS, export_model
from lstm_jax.sentiment.errors import UserError, exit_on_user_error, interrupt_on_sigterm
from lstm_jax.sentiment.process import startup  # noqa: F401  (first: Ctrl-C while the libraries load exits quietly)
from lstm_jax.sentiment.process.cli import require_local, run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory holding the checkpoints.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write (an existing non-empty one only with --force).")
_FORMAT = flags.DEFINE_list("format", ["stablehlo"], f"One or more of {', '.join(FORMATS)}, comma-separated.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the best by validation accuracy).")
_FORCE = flags.DEFINE_bool("force", False, "Replace a non-empty --output (once the new one is complete).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "Probability of positive at or above which a statement is positive.")


@exit_on_user_error
def main(argv):
    logging.set_verbosity(logging.FATAL)  # orbax warns that read-only managers do not save
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value or not _OUTPUT.value:
        raise UserError("--workdir and --output are required, e.g. --workdir checkpoints/default --output exported")
    require_local(workdir=_WORKDIR.value, output=_OUTPUT.value)
    interrupt_on_sigterm()  # a scheduler's SIGTERM stops like Ctrl-C: nothing half-written is left
    folder = export_model(_WORKDIR.value, _OUTPUT.value, _FORMAT.value, _STEP.value, _FORCE.value, _THRESHOLD.value)
    size = sum(path.stat().st_size for path in folder.iterdir())
    print(f"exported {', '.join(_FORMAT.value)} to {folder.resolve()} ({size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    run(main)
