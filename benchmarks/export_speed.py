"""Inference speed of an exported model: checkpoint path vs StableHLO artifact vs ONNX Runtime vs PyTorch.

python benchmarks/export_speed.py --quick          # about 2 minutes on 2 CPU cores
python benchmarks/export_speed.py                  # more repetitions
python benchmarks/export_speed.py --out benchmarks/results   # replace the committed results

Two measurements, each in this one process, implementations interleaved in rotated order after warm-up,
medians of the repetitions (compilation and session creation are not timed):

1. The whole classifier (embedding -> LSTM -> last state -> dense -> sigmoid) on full-length batches at the
   tutorial shape (E32 H32 B32 T100) and the medium shape (E128 H128 B64 T200): the checkpoint path (the jitted
   function ``predict.py --workdir`` runs, batch split over the cores), the StableHLO artifact, ONNX Runtime,
   and PyTorch ``nn.LSTM`` built from the same weights (2 threads). Ratios are to PyTorch, per repetition.
2. Statements per second through ``predict(texts)`` (tokenizing and batching included) for the default model
   (bidirectional GRU, mean+max pooling) and the medium LSTM, one statement per call and 256 per batch.

Also: artifact sizes, and load time in a fresh process (import + load, then the first prediction).
The weights are random (speed does not depend on their values); outputs are checked to agree.
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # as predict.py runs
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={os.cpu_count() or 1}").strip()  # fmt: skip

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import machine  # noqa: E402

import lstm_jax.deploy as deploy  # noqa: E402
from lstm_jax.sentiment.config import base_config  # noqa: E402
from lstm_jax.sentiment.deploy.export import _write_folder, named_weights  # noqa: E402
from lstm_jax.sentiment.deploy.predict import RestoredModel, checkpoint_runner  # noqa: E402
from lstm_jax.sentiment.deploy.predictor import Predictor  # noqa: E402
from lstm_jax.sentiment.model.classifier import DataSizes, build_model  # noqa: E402
from lstm_jax.sentiment.tokenizer import Vocabulary  # noqa: E402

SHAPES = {"tutorial": dict(vocab=25000, embed=32, hidden=32, batch=32, time=100),
          "medium": dict(vocab=25000, embed=128, hidden=128, batch=64, time=200)}  # fmt: skip
DEFAULT_MODEL = dict(vocab_size=8000, embedding_dim=64, hidden_size=64, cell="gru", bidirectional=True,
                     pooling="mean_max", max_len=100)  # configs/default.py  # fmt: skip


def _restored(vocab_size: int, max_len: int, **settings) -> RestoredModel:
    config = base_config()
    config.update(dict(max_len=max_len, dataset="benchmark", **settings))
    sizes = DataSizes(vocab_size)
    model = build_model(config, sizes, nnx.Rngs(0))
    vocabulary = Vocabulary([f"w{index}" for index in range(vocab_size - 2)])
    return RestoredModel(model, config, sizes, vocabulary, max_len, 16, 0, {"config": config.to_dict()})


def _export(restored: RestoredModel, folder: Path) -> Path:
    folder.mkdir()
    _write_folder(restored, folder, ["stablehlo", "onnx"], 0.5)
    return folder


def _torch_classifier(restored: RestoredModel):
    import torch

    weights = {name: torch.from_numpy(leaf) for name, leaf in named_weights(restored.model).items()}
    embed, hidden = weights["embedder/embed/embedding"].shape[1], restored.config.hidden_size
    lstm = torch.nn.LSTM(embed, hidden, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(weights["encoder/layers/0/cell/input_kernel"].T)
        lstm.weight_hh_l0.copy_(weights["encoder/layers/0/cell/recurrent_kernel"].T)
        lstm.bias_ih_l0.copy_(weights["encoder/layers/0/cell/bias"])
        lstm.bias_hh_l0.zero_()
    table, kernel, bias = (weights[name] for name in ("embedder/embed/embedding", "head/linear/kernel",
                                                      "head/linear/bias"))  # fmt: skip

    def run(tokens, lengths):
        with torch.inference_mode():
            _, (h, _) = lstm(table[torch.from_numpy(tokens).long()])
            return torch.sigmoid(h[0] @ kernel + bias)[:, 0].numpy()

    return run


def _classifier_runners(restored: RestoredModel, folder: Path) -> dict:
    runners = {
        "checkpoint path (jit, batch over cores)": checkpoint_runner(restored.model).run_batch,
        "StableHLO artifact": deploy.load(folder, "stablehlo").runner.run_batch,
        "ONNX Runtime": deploy.load(folder, "onnx").runner.run_batch,
        "PyTorch nn.LSTM": _torch_classifier(restored),
    }
    return runners


def _interleaved(runners: dict, make_args, items: int, repetitions: int, seconds: float) -> dict:
    """Per implementation: median items/s over ``repetitions`` rotated rounds, each run for about ``seconds``."""
    args = make_args()
    for run in runners.values():  # warm-up: compilation, session set-up, caches
        run(*args)
        run(*args)
    calls = {}
    for name, run in runners.items():  # how many calls fill `seconds`
        start = time.perf_counter()
        run(*args)
        calls[name] = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    rates = {name: [] for name in runners}
    names = list(runners)
    for repetition in range(repetitions):
        for name in names[repetition % len(names):] + names[: repetition % len(names)]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                runners[name](*args)
            rates[name].append(calls[name] * items / (time.perf_counter() - start))
    return rates


def classifier_table(shape_name: str, repetitions: int, seconds: float, work: Path) -> list[dict]:
    shape = SHAPES[shape_name]
    restored = _restored(shape["vocab"], shape["time"], embedding_dim=shape["embed"], hidden_size=shape["hidden"])
    folder = _export(restored, work / f"classifier-{shape_name}")
    runners = _classifier_runners(restored, folder)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, shape["vocab"], (shape["batch"], shape["time"])).astype(np.int32)
    lengths = np.full(shape["batch"], shape["time"], np.int32)
    outputs = {name: run(tokens, lengths) for name, run in runners.items()}
    reference = outputs["checkpoint path (jit, batch over cores)"]
    rates = _interleaved(runners, lambda: (tokens, lengths), shape["batch"], repetitions, seconds)
    torch_rates = rates["PyTorch nn.LSTM"]
    return [{"shape": shape_name, **shape, "implementation": name,
             "examples_per_s": statistics.median(values),
             "vs_pytorch": statistics.median(v / t for v, t in zip(values, torch_rates)),
             "max_abs_difference": float(np.abs(outputs[name] - reference).max())}
            for name, values in rates.items()]  # fmt: skip


def _texts(count: int, vocab_size: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 60, count)  # Rotten Tomatoes snippets: 21 tokens on average, up to ~60
    return [" ".join(f"w{word}" for word in rng.integers(0, vocab_size - 2, n)) for n in lengths]


def _one_at_a_time(predictor):
    return lambda texts: [predictor.predict([text]) for text in texts]


def _checkpoint_predictor(restored: RestoredModel, batch_size: int) -> Predictor:
    return Predictor(checkpoint_runner(restored.model), restored.vocabulary, restored.max_len, restored.length_bucket,
                     0.5, {}, batch_size)  # fmt: skip


def statements_table(model_name: str, restored: RestoredModel, repetitions: int, seconds: float,
                     work: Path) -> list[dict]:  # fmt: skip
    folder = _export(restored, work / f"statements-{model_name}")
    rows = []
    for batch_size, count in ((1, 16), (256, 2048)):
        predictors = {
            "checkpoint path": _checkpoint_predictor(restored, batch_size),
            "StableHLO artifact": deploy.load(folder, "stablehlo", batch_size=batch_size),
            "ONNX Runtime": deploy.load(folder, "onnx", batch_size=batch_size),
        }
        texts = _texts(count, restored.sizes.vocab_size)
        if batch_size == 1:  # one statement per call, as a service answering one person would
            runners = {name: _one_at_a_time(p) for name, p in predictors.items()}
        else:
            runners = {name: p.predict for name, p in predictors.items()}
        rates = _interleaved(runners, lambda texts=texts: (texts,), count, repetitions, seconds)
        checkpoint = rates["checkpoint path"]
        rows += [{"model": model_name, "batch_size": batch_size, "implementation": name,
                  "statements_per_s": statistics.median(values),
                  "vs_checkpoint": statistics.median(v / c for v, c in zip(values, checkpoint))}
                 for name, values in rates.items()]  # fmt: skip
    return rows


def load_times(folder: Path) -> dict:
    """Fresh processes: import + load(), then the first prediction (compilation or session warm-up)."""
    result = {"sizes_bytes": {path.name: path.stat().st_size for path in sorted(folder.iterdir())}}
    for model_format in ("stablehlo", "onnx"):
        code = ("import time; start = time.perf_counter(); import lstm_jax.deploy as d\n"
                f"m = d.load({str(folder)!r}, {model_format!r}); loaded = time.perf_counter() - start\n"
                "m.predict(['w1 w2 w3']); print(loaded, time.perf_counter() - start)")  # fmt: skip
        times = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
            times.append([float(x) for x in out.stdout.split()])
        result[model_format] = {"load_s": statistics.median(t[0] for t in times),
                                "load_and_first_prediction_s": statistics.median(t[1] for t in times)}  # fmt: skip
    return result


def markdown(results: dict) -> str:
    lines = [f"# Exported-model inference speed ({results['machine_before']['cpu_count']} CPUs)", "",
             f"`{results['command']}`; load average {results['machine_before']['load_average_1min']} before, "
             f"{results['machine_after']['load_average_1min']} after.", "",
             "| shape | implementation | examples/s | × PyTorch | max abs diff |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for row in results["classifier"]:
        lines.append(f"| {row['shape']} | {row['implementation']} | {row['examples_per_s']:,.0f} | "
                     f"{row['vs_pytorch']:.2f}× | {row['max_abs_difference']:.1e} |")  # fmt: skip
    lines += ["", "| model | batch | implementation | statements/s | × checkpoint |", "|---|---:|---|---:|---:|"]
    for row in results["statements"]:
        lines.append(f"| {row['model']} | {row['batch_size']} | {row['implementation']} | "
                     f"{row['statements_per_s']:,.0f} | {row['vs_checkpoint']:.2f}× |")  # fmt: skip
    loads = results["load"]
    lines += ["", "| default model artifact | size | load (fresh process, import included) | + first prediction |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for model_format, files in (("stablehlo", ("model.stablehlo", "weights.npz")), ("onnx", ("model.onnx",))):
        size = sum(loads["sizes_bytes"][name] for name in files) / 1e6
        lines.append(f"| {model_format} | {size:.2f} MB | {loads[model_format]['load_s']:.2f} s | "
                     f"{loads[model_format]['load_and_first_prediction_s']:.2f} s |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of about 0.3 s each")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--out", default=None, help="results folder (default: a new one under ./bench-runs)")
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.quick else 7)
    seconds = 0.3 if args.quick else 1.0
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "export_speed")
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python", *sys.argv]), "machine_before": machine.describe(),
               "versions": {"jax": jax.__version__}}  # fmt: skip
    import onnxruntime
    import torch

    results["versions"].update(onnxruntime=onnxruntime.__version__, torch=torch.__version__)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        results["classifier"] = [row for shape in SHAPES for row in classifier_table(shape, repetitions, seconds, work)]
        default = _restored(**DEFAULT_MODEL)
        medium = _restored(25000, 200, embedding_dim=128, hidden_size=128)
        results["statements"] = (statements_table("default (BiGRU 64)", default, repetitions, seconds, work)
                                 + statements_table("LSTM E128 H128", medium, repetitions, seconds, work))  # fmt: skip
        results["load"] = load_times(work / "statements-default (BiGRU 64)")
    results["machine_after"] = machine.describe()
    machine.save_results(out, "export_speed", results, markdown(results))


if __name__ == "__main__":
    main()
