"""Benchmark: lstm_jax's recurrences against Flax's nn.RNN and PyTorch, training step and inference.

python benchmarks/step_speed.py --quick            # about 4-5 minutes on 2 CPU cores; results in ./bench-runs/<new>
python benchmarks/step_speed.py                    # the full grid
python benchmarks/step_speed.py --out benchmarks/results --tag cpu-quick   # replace the committed results
python benchmarks/step_speed.py --accelerator      # the GPU grid (benchmarks/gpu.sh runs it)

The workload is the sentiment model: Embedding(V, E) -> recurrent layer (final hidden state) -> Dense(1),
binary cross-entropy, Adam. "train" is a whole step (forward, backward, update), "infer" the forward pass
returning probabilities. lstm_jax runs its real training step
(``lstm_jax.sentiment.train.trainer.train_step``) with true lengths passed (all equal to the sequence length here,
as PyTorch eager does no masking).

Method: every implementation is compiled first (JAX lower + compile timed apart, with XLA's peak buffer
estimate), warmed up, then timed in several repetitions; each repetition runs the implementations in a
rotated order, one after another in this process, each for a fixed number of steps ending with
``block_until_ready``. Throughput ratios against PyTorch eager (default threads) are taken per repetition
and the median is reported.

The accelerator grid (``--accelerator``) measures the LSTM at the three shapes with every lstm_jax backend
(``auto``, ``cudnn``, ``fused``, ``scan`` with unroll 1, 4, 16; the scan paths also in bfloat16), Flax's
nn.RNN and PyTorch's nn.LSTM on the same device (cuDNN on a GPU); ratios are then against PyTorch there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

SHAPES = {
    "seed": dict(vocab=25000, embed=32, hidden=32, batch=32, time=100),
    "medium": dict(vocab=25000, embed=128, hidden=128, batch=64, time=200),
    "large": dict(vocab=25000, embed=256, hidden=512, batch=128, time=256),
}
CELL_MODELS = {  # benchmark cell -> (lstm_jax cell, bidirectional)
    "lstm": ("lstm", False),
    "gru": ("gru", False),
    "peephole_lstm": ("peephole_lstm", False),
    "bilstm": ("lstm", True),
    "slstm": ("slstm", False),
    "mlstm": ("mlstm", False),
}
PYTHON_LOOP_MAX_TIME = 50  # a Python-unrolled loop compiles for minutes beyond this many steps


@dataclasses.dataclass
class Runner:
    """One implementation, built for one case: ``run(n)`` does n steps and waits for the result."""

    run: Callable[[int], None]
    compile_seconds: float | None = None
    memory_bytes: int | None = None
    threads: int | None = None
    backend: str | None = None  # lstm_jax: the recurrence its layers picked (RNN.backend)


def _batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(2, shape["vocab"], (shape["batch"], shape["time"])).astype(np.int32),
        np.full((shape["batch"],), shape["time"], np.int32),
        rng.integers(0, 2, (shape["batch"],)).astype(np.int32),
    )


def _memory(compiled) -> int | None:
    try:
        analysis = compiled.memory_analysis()
        return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def _compiled(jitted, *args):
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ lstm_jax


def build_lstm_jax(shape, cell, workload, *, unroll=1, backend="auto", dtype="float32", shard=False) -> Runner:
    """The job's own ``train_step`` (train) or the predictor's forward pass (infer) on one fixed batch."""
    from flax import nnx

    from lstm_jax.recurrent import RNN
    from lstm_jax.sentiment.config import base_config
    from lstm_jax.sentiment.model.classifier import DataSizes
    from lstm_jax.sentiment.train.trainer import create_train_state, train_step

    config = base_config()
    cell_name, bidirectional = CELL_MODELS[cell]
    config.update(dict(cell=cell_name, bidirectional=bidirectional, embedding_dim=shape["embed"],
                       hidden_size=shape["hidden"], unroll=unroll, backend=backend, dtype=dtype))  # fmt: skip
    devices = jax.devices() if shard else jax.devices()[:1]
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    tokens, lengths, labels = _batch(shape)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = create_train_state(config, DataSizes(shape["vocab"]), mesh)
    model = state.model()
    picked = sorted({module.backend for _, module in nnx.iter_modules(model) if isinstance(module, RNN)})
    if workload == "train":
        examples = jax.device_put({"tokens": tokens, "lengths": lengths, "labels": labels}, replicated)
        # A one-batch plan (all rows, in order): JAX clamps out-of-range retrieval indices, so every later
        # step takes that batch again. What varies between the runners is only the implementation.
        order = np.arange(shape["batch"], dtype=np.int32)[None]
        order = jax.device_put(order, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")))
        compiled, seconds = _compiled(train_step, state, examples, order, shape["time"])
        holder = [state]

        def run(n):
            for _ in range(n):
                holder[0] = compiled(holder[0], examples, order)
            jax.block_until_ready(holder[0].step)

    else:
        graphdef = state.graphdef
        tokens, lengths = jax.device_put((tokens, lengths), split)
        forward = jax.jit(lambda params, t, l: jax.nn.sigmoid(nnx.merge(graphdef, params)(t, l)))
        compiled, seconds = _compiled(forward, state.params, tokens, lengths)

        def run(n):
            for _ in range(n):
                out = compiled(state.params, tokens, lengths)
            jax.block_until_ready(out)

    return Runner(run, seconds, _memory(compiled), backend="+".join(picked))


# ------------------------------------------------------------------------------------------ Flax linen


def build_flax(shape, cell, workload) -> Runner:
    import flax.linen as nn
    import optax

    class LinenSentiment(nn.Module):
        @nn.compact
        def __call__(self, tokens, lengths):
            x = nn.Embed(shape["vocab"], shape["embed"])(tokens)
            rnn_cell = nn.OptimizedLSTMCell(shape["hidden"]) if cell == "lstm" else nn.GRUCell(shape["hidden"])
            carry, _ = nn.RNN(rnn_cell, return_carry=True)(x, seq_lengths=lengths)
            hidden = carry[1] if cell == "lstm" else carry
            return nn.Dense(1)(hidden)[:, 0]

    model = LinenSentiment()
    tokens, lengths, labels = (jnp.asarray(a) for a in _batch(shape))
    params = model.init(jax.random.key(0), tokens, lengths)
    if workload == "train":
        tx = optax.adam(1e-3)

        def train_step(params, opt_state, tokens, lengths, labels):
            def loss_fn(params):
                logits = model.apply(params, tokens, lengths)
                return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        state = [params, tx.init(params)]
        compiled, seconds = _compiled(jax.jit(train_step, donate_argnums=(0, 1)), *state, tokens, lengths, labels)

        def run(n):
            for _ in range(n):
                state[0], state[1], loss = compiled(state[0], state[1], tokens, lengths, labels)
            jax.block_until_ready(loss)

    else:
        compiled, seconds = _compiled(
            jax.jit(lambda p, t, l: jax.nn.sigmoid(model.apply(p, t, l))), params, tokens, lengths
        )

        def run(n):
            for _ in range(n):
                out = compiled(params, tokens, lengths)
            jax.block_until_ready(out)

    return Runner(run, seconds, _memory(compiled))


# ------------------------------------------------------------------------------------------ PyTorch


def build_torch(shape, cell, workload, *, threads: int | None = None, device: str = "cpu",
                autocast: bool = False) -> Runner:  # fmt: skip
    """PyTorch eager on ``device``: its own kernels on a CPU, cuDNN's on ``cuda`` (``autocast``: in bfloat16)."""
    import contextlib

    import torch

    precision = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    threads = threads or DEFAULT_TORCH_THREADS or torch.get_num_threads()
    torch.manual_seed(0)
    _, bidirectional = CELL_MODELS[cell]
    recurrent_class = torch.nn.GRU if cell == "gru" else torch.nn.LSTM

    class TorchSentiment(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(shape["vocab"], shape["embed"])
            self.rnn = recurrent_class(shape["embed"], shape["hidden"], batch_first=True, bidirectional=bidirectional)
            self.head = torch.nn.Linear(shape["hidden"] * (2 if bidirectional else 1), 1)

        def forward(self, tokens):
            _, state = self.rnn(self.embed(tokens))
            h_n = state[0] if isinstance(state, tuple) else state
            last = torch.cat([h_n[-2], h_n[-1]], dim=-1) if bidirectional else h_n[-1]
            return self.head(last).squeeze(-1)

    model = TorchSentiment().to(device)
    tokens, _, labels = (torch.from_numpy(a).to(device) for a in _batch(shape))
    labels = labels.float()

    def finish():
        if device != "cpu":
            torch.cuda.synchronize()

    if workload == "train":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def run(n):
            torch.set_num_threads(threads)
            for _ in range(n):
                optimizer.zero_grad(set_to_none=True)
                with precision():
                    loss = loss_fn(model(tokens), labels)
                loss.backward()
                optimizer.step()
            finish()

    else:
        model.eval()

        def run(n):
            torch.set_num_threads(threads)
            with torch.inference_mode(), precision():
                for _ in range(n):
                    torch.sigmoid(model(tokens))
            finish()

    return Runner(run, threads=threads)


DEFAULT_TORCH_THREADS = None  # set in main() from torch.get_num_threads() before anything changes it


# ------------------------------------------------------------------------------------------ driver


def _ours(**options) -> Callable:
    """A runner builder for lstm_jax with these :func:`build_lstm_jax` options (backend, unroll, dtype, shard)."""
    return functools.partial(build_lstm_jax, **options)


def implementations(cell: str, shape: dict, quick: bool) -> dict[str, Callable]:
    """The implementations that apply to a case, by display name."""
    impls = {"lstm_jax auto": _ours()}
    if cell in ("lstm", "bilstm"):  # auto runs the native kernel where it builds; fused is the XLA recurrence
        impls["lstm_jax fused"] = _ours(backend="fused")
    if cell == "mlstm":
        impls["lstm_jax chunkwise"] = _ours(backend="chunkwise")
        impls["lstm_jax parallel"] = _ours(backend="parallel")
    devices = len(jax.devices())
    if devices > 1 and shape["batch"] % devices == 0:  # what predict.py does: the batch split over the cores
        impls[f"lstm_jax batch over {devices} CPU devices"] = _ours(shard=True)
    # The unroll sweep on the LSTM at the seed and medium shapes; elsewhere unroll 1 (the default) only.
    if cell != "lstm" or shape["hidden"] > 128:
        unrolls = [1]
    else:
        unrolls = [1, 4] if quick else [1, 2, 4, 8, 16]
    for unroll in unrolls:
        impls[f"lstm_jax scan u{unroll}"] = _ours(unroll=unroll, backend="scan")
    if not quick and shape["time"] <= PYTHON_LOOP_MAX_TIME:
        impls["lstm_jax python loop"] = _ours(backend="python")
    if cell in ("lstm", "gru"):
        impls["flax nn.RNN"] = build_flax
    if cell in ("lstm", "gru", "bilstm") and _has_torch():
        impls["torch eager"] = build_torch
        impls["torch eager 1 thread"] = functools.partial(build_torch, threads=1)
    return impls


def accelerator_implementations(cell: str = "lstm") -> dict[str, Callable]:
    """The accelerator grid: for the LSTM every backend (scan with unroll 1 and 8, scan in bfloat16), Flax's
    nn.RNN and PyTorch (cuDNN, float32 and bfloat16 autocast); for the other cells their ``auto`` backend
    (and PyTorch's GRU)."""
    from lstm_jax import cudnn

    impls = {"lstm_jax auto": _ours(backend="auto")}
    if cell == "lstm":
        if cudnn.unavailable_reason() is None:
            impls["lstm_jax cudnn"] = _ours(backend="cudnn")
        impls["lstm_jax fused"] = _ours(backend="fused")
        for unroll in (1, 8):
            impls[f"lstm_jax scan u{unroll}"] = _ours(unroll=unroll, backend="scan")
        impls["lstm_jax scan u1 bf16"] = _ours(backend="scan", dtype="bfloat16")
        impls["flax nn.RNN"] = build_flax
    if cell in ("lstm", "gru") and _has_torch():
        import torch

        if torch.cuda.is_available():
            impls["torch cudnn"] = functools.partial(build_torch, device="cuda")
            impls["torch cudnn bf16 autocast"] = functools.partial(build_torch, device="cuda", autocast=True)
        else:
            impls["torch eager"] = build_torch
    return impls


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _steps_for(runner: Runner, seconds: float) -> int:
    runner.run(2)  # warm-up (first calls allocate, autotune, fill caches)
    start = time.perf_counter()
    runner.run(1)
    once = max(time.perf_counter() - start, 1e-6)
    return max(2, min(2000, int(seconds / once)))


def measure_case(workload, shape_name, shape, cell, impls, repetitions, seconds) -> list[dict]:
    runners, steps, records = {}, {}, {}
    for name, build in impls.items():
        runners[name] = build(shape, cell, workload)
        steps[name] = _steps_for(runners[name], seconds)
    times = {name: [] for name in impls}
    names = list(impls)
    for repetition in range(repetitions):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name].run(steps[name])
            times[name].append((time.perf_counter() - start) / steps[name])
    baseline = times.get("torch cudnn") or times.get("torch eager")
    for name in names:
        step_seconds = statistics.median(times[name])
        ratios = [b / t for b, t in zip(baseline, times[name])] if baseline else None
        records[name] = {
            "workload": workload,
            "shape": shape_name,
            **{k: v for k, v in shape.items()},
            "cell": cell,
            "implementation": name,
            "step_seconds_median": step_seconds,
            "step_seconds": times[name],
            "examples_per_second": shape["batch"] / step_seconds,
            "us_per_time_step": 1e6 * step_seconds / shape["time"],
            "gflops": flops / step_seconds / 1e9 if (flops := recurrence_flops(shape, cell, workload)) else None,
            "ratio_vs_torch": statistics.median(ratios) if ratios else None,
            "ratios_vs_torch": ratios,
            "compile_seconds": runners[name].compile_seconds,
            "memory_bytes": runners[name].memory_bytes,
            "threads": runners[name].threads,
            "backend": runners[name].backend,
        }
    return list(records.values())


GATES = {"lstm": 4, "peephole_lstm": 4, "bilstm": 4, "gru": 3}  # gate blocks of the cells counted in GFLOP/s


def recurrence_flops(shape: dict, cell: str, workload: str) -> float | None:
    """Matrix FLOPs of the recurrent layer over one batch: 2 B T (E + H) G H forward for G gates (per direction);
    training 3x (the backward pass is two such products). Elementwise work, the embedding and the head are left
    out. ``None`` for cells without that form (the xLSTM cells)."""
    if cell not in GATES:
        return None
    forward = 2 * shape["batch"] * shape["time"] * (shape["embed"] + shape["hidden"]) * GATES[cell] * shape["hidden"]
    return forward * (2 if CELL_MODELS[cell][1] else 1) * (3 if workload == "train" else 1)


def grid(quick: bool, accelerator: bool = False, shapes: tuple[str, ...] = tuple(SHAPES),
         cells: tuple[str, ...] = tuple(CELL_MODELS), sweep: bool = True, workloads=("train", "infer")):
    """Yields (workload, shape name, shape, cell) cases."""
    if accelerator:
        for workload in ("train", "infer"):
            for shape_name in shapes:
                yield workload, shape_name, SHAPES[shape_name], "lstm"
            if "large" in shapes:
                for cell in ("gru", "slstm", "mlstm"):
                    yield workload, "large", SHAPES["large"], cell
        return
    shapes = ["seed"] if quick else [name for name in SHAPES if name in shapes]
    cells = ["lstm", "slstm", "mlstm"] if quick else [name for name in CELL_MODELS if name in cells]
    for workload in workloads:
        for shape_name in shapes:
            for cell in cells:
                if shape_name == "large" and cell not in ("lstm", "bilstm", "gru"):
                    continue  # the large shape costs seconds a step on 2 cores: the LSTM, BiLSTM and GRU only
                yield workload, shape_name, SHAPES[shape_name], cell
        if not sweep:
            continue
        lengths = [25, 50, 200] if quick else [25, 50, 200, 400]
        for length in lengths:  # the sequence-length sweep at the seed shape (length 100 is above)
            yield workload, f"seed-T{length}", {**SHAPES["seed"], "time": length}, "lstm"
        yield workload, "seed-T400", {**SHAPES["seed"], "time": 400}, "mlstm"  # the mLSTM's forms on long inputs


def environment() -> dict:
    import flax

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "flax": flax.__version__,
        "torch": __import__("torch").__version__ if _has_torch() else None,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_default_threads": DEFAULT_TORCH_THREADS,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE keeps PyTorch sane on a loaded machine
    }


def peak_gflops(threads: int, size: int = 2048, repetitions: int = 5) -> float | None:
    """The machine's matmul rate: the best of a few float32 ``size``-square products in PyTorch on ``threads``."""
    if not _has_torch():
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repetitions):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _peak_text(peak: dict) -> str:
    return ", ".join(f"{gflops:,.0f} GFLOP/s on {threads} thread{'s' * (threads > 1)}"
                     for threads, gflops in peak.items() if gflops) or "not measured (no PyTorch)"


def table(records: list[dict]) -> str:
    lines = [
        "| workload | shape | cell | implementation | backend | examples/s | × torch | µs/step | GFLOP/s | compile s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        ratio = f"{r['ratio_vs_torch']:.2f}×" if r["ratio_vs_torch"] else "—"
        compile_s = f"{r['compile_seconds']:.2f}" if r["compile_seconds"] is not None else "—"
        gflops = f"{r['gflops']:,.1f}" if r.get("gflops") is not None else "—"
        lines.append(
            f"| {r['workload']} | {r['shape']} | {r['cell']} | {r['implementation']} | {r.get('backend') or '—'} | "
            f"{r['examples_per_second']:,.0f} | {ratio} | {r.get('us_per_time_step', 0):,.1f} | {gflops} | "
            f"{compile_s} |"
        )
    return "\n".join(lines)


def plots(records: list[dict], out: Path, tag: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sweep = [r for r in records if r["shape"].startswith("seed") and r["cell"] == "lstm"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, workload in zip(axes, ("train", "infer")):
        axis.set_prop_cycle(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2])
        rows = [r for r in sweep if r["workload"] == workload]
        for name in dict.fromkeys(r["implementation"] for r in rows):
            points = sorted((r["time"], r["examples_per_second"]) for r in rows if r["implementation"] == name)
            axis.plot(*zip(*points), "o-", label=name)
        axis.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="examples / s", title=f"{workload}, LSTM")
        lengths = sorted({r["time"] for r in rows})
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    figure.tight_layout()
    paths.append(out / f"{tag}-throughput-vs-length.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for (workload, shape_name), marker in zip(
        sorted({(r["workload"], r["shape"]) for r in records if r["cell"] == "lstm" and "T" not in r["shape"]}),
        "osd^v<>",
    ):
        rows = [
            r for r in records
            if r["workload"] == workload and r["shape"] == shape_name and r["cell"] == "lstm"
            and r["implementation"].startswith("lstm_jax scan u") and not r["implementation"].endswith("bf16")
        ]  # fmt: skip
        points = sorted((int(r["implementation"].rsplit("u", 1)[1]), r["compile_seconds"]) for r in rows)
        if points:
            axis.plot(*zip(*points), marker + "-", label=f"{workload} {shape_name}")
    axis.set(xscale="log", xlabel="scan unroll", ylabel="compile seconds", title="JAX compile time vs unroll (LSTM)")
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out / f"{tag}-compile-vs-unroll.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
    return paths


def main(argv=None):
    global DEFAULT_TORCH_THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed shape, LSTM only, few unrolls (< 3 minutes)")
    parser.add_argument("--accelerator", action="store_true", help="the GPU grid: every LSTM backend at 3 shapes")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names (" + ", ".join(SHAPES)
                        + "); naming some leaves out the sequence-length sweep")
    parser.add_argument("--cells", default=",".join(CELL_MODELS), help="CPU grid: comma-separated cells")
    parser.add_argument("--workloads", default="train,infer", help="CPU grid: train, infer or both")
    parser.add_argument("--implementations", default=None, help="comma-separated implementation names to run "
                        "(e.g. 'lstm_jax auto,torch eager'; default all that apply)")
    parser.add_argument("--out", default=None, help="folder for the JSON and PNG files (default: a new one under "
                        "./bench-runs; benchmarks/results holds the committed ones)")
    parser.add_argument("--tag", default=None, help="file name prefix (default: <backend>-<quick|full>)")
    parser.add_argument("--repetitions", type=int, default=None, help="timed repetitions per case")
    parser.add_argument("--seconds", type=float, default=None, help="target seconds per timed block")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON and markdown only")
    parser.add_argument("--plot-only", default=None, help="redraw the plots of an earlier JSON result and exit")
    args = parser.parse_args(argv)
    if args.plot_only:
        source = Path(args.plot_only)
        for path in plots(json.loads(source.read_text())["records"], source.parent, source.stem):
            print(f"wrote {path}")
        return
    if jax.default_backend() == "cpu" and len(jax.devices()) == 1 and (os.cpu_count() or 1) > 1 and argv is None \
            and not args.accelerator:  # fmt: skip
        # Re-run with one XLA CPU device per core so the "batch over N devices" variant can be measured
        # (single-device implementations are unaffected: they run on device 0).
        flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={os.cpu_count()}"
        os.execve(
            sys.executable,
            [sys.executable, __file__, *sys.argv[1:]],
            {**os.environ, "XLA_FLAGS": flags},
        )

    if _has_torch():
        import torch

        DEFAULT_TORCH_THREADS = torch.get_num_threads()
    else:
        print("PyTorch is not installed (pip install -e '.[dev]'): measuring without the PyTorch peers")
    repetitions = args.repetitions or (3 if args.quick else 5)
    seconds = args.seconds or (0.25 if args.quick else 0.5)
    tag = (
        args.tag
        or f"{jax.default_backend()}-{'quick' if args.quick else 'accelerator' if args.accelerator else 'full'}"
    )
    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", tag)
    out.mkdir(parents=True, exist_ok=True)

    machine_before = machine.describe()
    cores = os.cpu_count() or 1
    peak = {threads: peak_gflops(threads) for threads in sorted({1, cores})}
    records, started = [], time.time()
    shapes, cells = tuple(args.shapes.split(",")), tuple(args.cells.split(","))
    sweep = set(shapes) == set(SHAPES)
    workloads = tuple(args.workloads.split(","))
    for workload, shape_name, shape, cell in grid(args.quick, args.accelerator, shapes, cells, sweep, workloads):
        impls = accelerator_implementations(cell) if args.accelerator else implementations(cell, shape, args.quick)
        if args.implementations:
            impls = {name: build for name, build in impls.items() if name in args.implementations.split(",")}
        case = measure_case(workload, shape_name, shape, cell, impls, repetitions, seconds)
        records.extend(case)
        print(table(case).split("\n", 2)[2], flush=True)
    result = {
        "environment": environment(),
        "machine_before": machine_before,
        "machine_after": machine.describe(),
        "peak_matmul_gflops": peak,
        "settings": {
            "quick": args.quick,
            "accelerator": args.accelerator,
            "repetitions": repetitions,
            "seconds_per_block": seconds,
        },  # fmt: skip
        "wall_seconds": time.time() - started,
        "records": records,
    }
    json_path = out / f"{tag}.json"
    json_path.write_text(json.dumps(result, indent=1))
    env = result["environment"]
    baseline = (
        "PyTorch nn.LSTM on the GPU (cuDNN)"
        if any(r["implementation"] == "torch cudnn" for r in records)
        else "PyTorch eager at default threads"
    )
    header = (
        f"# Benchmark `{tag}`\n\n"
        f"`python benchmarks/step_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" on {env['processor']} ({env['cpu_count']} CPUs, {env['backend']}: {env['device_kind']}), "
        f"jax {env['jax']}, flax {env['flax']}, "
        f"torch {env['torch']} (default {env['torch_default_threads']} threads"
        f"{', OMP_WAIT_POLICY=' + env['omp_wait_policy'] if env['omp_wait_policy'] else ''}), {env['date']}; "
        f"{repetitions} repetitions, medians; × torch = throughput relative to {baseline}; "
        "backend = the recurrence lstm_jax's layers ran (RNN.backend); GFLOP/s = the recurrent layer's matrix "
        "FLOPs (2·B·T·G·H·(E+H) per direction, 3x to train) per second; peak = one 2048² float32 matmul in "
        f"PyTorch: {_peak_text(peak)}; load average "
        f"{result['machine_before']['load_average_1min']} before, {result['machine_after']['load_average_1min']} "
        "after.\n\n"
    )
    (out / f"{tag}.md").write_text(header + table(records) + "\n")
    paths = [] if args.no_plots else plots(records, out, tag)
    print()
    print(table(records))
    print(f"\nwrote {json_path} and {', '.join(str(p) for p in paths)} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
