"""What a run writes for people to read: ``metrics.jsonl``, TensorBoard event files and ``training_curves.png``.

``metrics.jsonl`` (one JSON line per finished epoch, then the final test line) is rewritten atomically at
every epoch end; TensorBoard gets each epoch's scalars as they come; the PNG is drawn once, when training
ends, stops early or is interrupted (drawing it costs about a third of a second, every epoch added up).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path


@contextlib.contextmanager
def _without_torch():
    """tensorboardX imports torch when it is installed (1.7 s) only to accept its tensors; we pass floats."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        yield
    finally:
        del sys.modules["torch"]


def _import_matplotlib() -> None:
    from matplotlib import figure  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class RunReport:
    """The human-readable outputs of one run in ``workdir`` (only the main process writes them)."""

    def __init__(self, workdir: Path, history: list[dict], enabled: bool = True, tensorboard: bool = True,
                 title: str = "", tested: str = "best", planned_epochs: int | None = None):  # fmt: skip
        self.workdir, self.history, self.enabled = Path(workdir), history, enabled
        self.title, self.tested, self.planned_epochs = title, tested, planned_epochs  # for the curves picture
        self._writer, self._curves, self._curves_error = None, None, None
        if enabled:  # import matplotlib (0.3 s) while training runs: the thread mostly waits on XLA, not Python
            threading.Thread(target=_import_matplotlib, daemon=True).start()
        if enabled and tensorboard:
            with _without_torch():
                from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.workdir / "tensorboard"))

    def add_epoch(self, entry: dict) -> None:
        self.history.append(entry)
        if not self.enabled:
            return
        self._write_jsonl()
        if self._writer is not None:
            for key, value in entry.items():
                if key not in ("epoch", "step"):
                    self._writer.add_scalar(key, value, entry["epoch"])
            self._writer.flush()

    def start_curves(self) -> None:
        """Draws the curves PNG in a background thread (about half a second: matplotlib's import and Agg), so it
        overlaps the test evaluation; :meth:`finish` waits for it."""
        if self.enabled and self.history and self._curves is None:
            self._curves = threading.Thread(target=self._write_curves_reporting, args=(list(self.history),),
                                            daemon=True)  # fmt: skip
            self._curves.start()

    def _write_curves_reporting(self, history: list[dict]) -> None:
        try:
            self._write_curves(history)
        except Exception as error:  # e.g. a full disk: raised again on the main thread by finish()
            self._curves_error = error
            (self.workdir / ".training_curves.tmp.png").unlink(missing_ok=True)

    def finish(self, final: dict | None = None) -> None:
        """Writes the final line (when given) and the curves; closes TensorBoard."""
        if not self.enabled:
            return
        self._write_jsonl(final)
        self.start_curves()
        if self._curves is not None:
            self._curves.join()
        if self._writer is not None:
            self._writer.close()
        if self._curves_error is not None:
            raise self._curves_error

    def _write_jsonl(self, final: dict | None = None) -> None:
        lines = [json.dumps(entry) for entry in self.history] + ([json.dumps(final)] if final else [])
        write_atomic(self.workdir / "metrics.jsonl", "".join(line + "\n" for line in lines))

    def _write_curves(self, history: list[dict]) -> None:
        figure = curves_figure(history, self.title, self.tested, self.planned_epochs)
        temporary = self.workdir / ".training_curves.tmp.png"
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, self.workdir / "training_curves.png")


def tested_epoch(history: list[dict], tested: str) -> int:
    """The epoch whose weights the test uses: the first with the best validation accuracy, or the last (also when
    the run had no validation split)."""
    if tested == "best" and "val_accuracy" in history[0]:
        return max(history, key=lambda entry: (entry["val_accuracy"], -entry["epoch"]))["epoch"]
    return history[-1]["epoch"]


def curves_figure(history: list[dict], title: str, tested: str = "best", planned_epochs: int | None = None):
    """Loss and accuracy (in %) per epoch for train and validation, the tested epoch and an early stop marked."""
    # The object API, not pyplot: no global state (safe in a thread), and pyplot's import is the slow part.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [entry["epoch"] for entry in history]
    figure = Figure(figsize=(9, 3.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    chosen = tested_epoch(history, tested)
    for axis, metric, label, scale in zip(axes, ("loss", "accuracy"), ("binary cross-entropy", "accuracy (%)"),
                                          (1.0, 100.0)):  # fmt: skip
        for split, name in [("train", "train")] + ([("val", "validation")] if "val_loss" in history[0] else []):
            axis.plot(epochs, [scale * entry[f"{split}_{metric}"] for entry in history], "o-", label=name)
        axis.axvline(chosen, color="tab:green", linestyle="--", label=f"tested (epoch {chosen})")
        if planned_epochs and epochs[-1] < planned_epochs:
            axis.axvline(epochs[-1], color="tab:red", linestyle=":", label=f"early stop (of {planned_epochs})")
        axis.set(xlabel="epoch", ylabel=label, title=metric)
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
