"""Trains the sentiment classifier.

python train.py [--config configs/default.py] [--workdir checkpoints/<config name>] [--config.key=value ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from lstm_jax.sentiment.errors import UserError, exit_on_user_error
from lstm_jax.sentiment.process import startup  # noqa: F401  (first: Ctrl-C while the libraries load exits quietly)
from lstm_jax.sentiment.process.cli import run
from lstm_jax.sentiment.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs go here (default: checkpoints/<config name>).")


@exit_on_user_error
def main(argv):
    # Orbax logs every save at INFO, every read-only open at WARNING, and a failed background write at ERROR
    # with tracebacks; the failures it reports reach us as exceptions and become one-line errors.
    logging.set_verbosity(logging.FATAL)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = Path(config_flags.get_config_filename(flags.FLAGS["config"]))
    if not config_file.is_file():
        raise UserError(f"config file {config_file} does not exist; choose one of configs/*.py")
    workdir = _WORKDIR.value or str(Path("checkpoints") / config_file.stem)
    train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
    run(main)
