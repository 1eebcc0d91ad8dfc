"""Load test of serve.py on loopback: statements/s and latency at 1, 16 and 64 concurrent clients, against
predict.py's batch throughput on the same model in the same run.

python benchmarks/serve_load.py --quick                        # about 1 minute on 2 CPU cores
python benchmarks/serve_load.py --out benchmarks/results       # replace the committed results

The server (``serve.py --model MODEL``, a subprocess on a free 127.0.0.1 port) answers Rotten Tomatoes' test
statements. Each client is a thread with one keep-alive HTTP connection sending ``POST /predict`` with
``--per_request`` statements, after one untimed request; every answer is checked against the probabilities
predict.py's code path gives for the same statements (an error is a non-200 status or a wrong answer).
Every level is bounded in requests and seconds. The clients share the 2 cores with the server, as a load
balancer's clients would not: the figures are a floor.

predict.py's throughput: ``deploy.load(MODEL).predict(statements)`` (batch 256, as ``predict.py --model``)
on all the statements in this process, median of 3, before and after the load levels (the server idle).
Start-up: from launching serve.py to ``GET /health`` answering 200 (compilation cache as it is).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402

TWENTY_WORDS = ("an intelligent and moving film that never talks down to its audience and earns every one of "
                "its quiet laughs")  # fmt: skip


def rt_test_statements() -> list[str]:
    from configs.default import get_config
    from lstm_jax.sentiment.data.datasets import load_splits

    return list(load_splits(get_config()).test.texts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, model_format: str, port: int, extra: list[str]) -> tuple[subprocess.Popen, float]:
    """The running server and its seconds from launch to ready."""
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "serve.py", "--model", model, "--format", model_format,
                               "--port", str(port), *extra], cwd=ROOT, stderr=subprocess.PIPE)  # fmt: skip
    deadline = started + 120
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve.py exited: {server.stderr.read().decode()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    server.kill()
    raise SystemExit("serve.py was not ready within 120 s")


def _client(port, jobs, texts, expected, barrier, deadline_box, latencies, errors, per_request):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ask(first: int) -> bool:
        chosen = [(first + offset) % len(texts) for offset in range(per_request)]
        connection.request("POST", "/predict", json.dumps({"statements": [texts[i] for i in chosen]}),
                           {"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return False
        predictions = json.loads(body)["predictions"]
        return len(predictions) == per_request and all(
            prediction["statement"] == texts[i] and abs(prediction["probability_positive"] - expected[i]) <= 1e-5
            for prediction, i in zip(predictions, chosen))  # fmt: skip

    ask(0)  # untimed: opens the connection
    barrier.wait()
    for job in jobs:
        if time.perf_counter() > deadline_box[0]:
            break
        started = time.perf_counter()
        try:
            correct = ask(job * per_request)
        except (OSError, http.client.HTTPException, ValueError):
            correct = False
            connection.close()
        latencies.append((started, time.perf_counter()))
        errors.append(not correct)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to tell the server's share of the work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_level(port, clients, requests, seconds, texts, expected, per_request, server_pid) -> dict:
    cpu_before = cpu_seconds(server_pid)
    jobs = iter(range(requests))
    lock = threading.Lock()

    def shared_jobs():  # every client draws the next request number from one counter
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                return
            yield job

    barrier = threading.Barrier(clients + 1)
    deadline_box = [float("inf")]
    latencies, errors = [], []
    arguments = (texts, expected, barrier, deadline_box, latencies, errors, per_request)
    threads = [threading.Thread(target=_client, args=(port, shared_jobs(), *arguments)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    deadline_box[0] = started + seconds
    for thread in threads:
        thread.join()
    elapsed = max(end for _, end in latencies) - started
    milliseconds = np.array([1000 * (end - begin) for begin, end in latencies])
    return {"clients": clients, "statements_per_request": per_request, "requests": len(latencies),
            "statements_per_s": round(len(latencies) * per_request / elapsed, 1),
            "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p95_ms": round(float(np.percentile(milliseconds, 95)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2), "errors": int(sum(errors)),
            "seconds": round(elapsed, 2),
            "server_cpu_ms_per_request": round(1000 * (cpu_seconds(server_pid) - cpu_before) / len(latencies), 3)}


def batch_throughput(predictor, texts: list[str], repetitions: int = 3) -> float:
    predictor.predict(texts[:256])  # warm-up
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        predictor.predict(texts)
        times.append(time.perf_counter() - started)
    return round(len(texts) / statistics.median(times), 1)


def markdown(results: dict) -> str:
    lines = [f"# serve.py under load ({results['model']} as {results['format']}, 2 CPU cores, loopback)", "",
             f"Command: `{results['command']}`. Machine: {results['machine_before']}.", "",
             f"predict.py's batch throughput (same model, this run): {results['predict_before']:,} statements/s "
             f"before, {results['predict_after']:,} after. Start-up to ready: {results['startup_s']} s.", "",
             "| clients | statements/request | requests | statements/s | vs predict.py | p50 ms | p95 ms | p99 ms | "
             "errors |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["levels"]:
        lines.append(f"| {row['clients']}{' (20-word statement)' if row.get('twenty_words') else ''} | "
                     f"{row['statements_per_request']} | {row['requests']} | {row['statements_per_s']:,} | "
                     f"{row['vs_predict']:.0%} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | "
                     f"{row['errors']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="exported/default", help="a folder written by export.py")
    parser.add_argument("--format", default="onnx", choices=["onnx", "stablehlo"])
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--per_request", default="1,16", help="statements per request, one level each")
    parser.add_argument("--requests", type=int, default=2000, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level")
    parser.add_argument("--server_flags", default="", help="more serve.py flags, e.g. '--max_wait_ms 0'")
    parser.add_argument("--quick", action="store_true", help="500 requests / 8 s per level")
    parser.add_argument("--out", default=None, help="results folder (default: a new ./bench-runs/serve_load-<time>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.seconds = 500, 8.0
    if not (ROOT / args.model / "manifest.json").is_file() and not (Path(args.model) / "manifest.json").is_file():
        raise SystemExit(f"no exported model at {args.model}; write one with: python export.py --workdir "
                         f"checkpoints/default --output {args.model}")  # fmt: skip
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import lstm_jax.deploy as deploy

    out = Path(args.out) if args.out else machine.fresh_folder("bench-runs", "serve_load")
    before = machine.describe()
    texts = rt_test_statements()
    predictor = deploy.load(ROOT / args.model, args.format)
    expected = predictor.predict(texts)
    predict_before = batch_throughput(predictor, texts)
    port = free_port()
    server, startup = start_server(args.model, args.format, port, args.server_flags.split())
    levels = []
    try:
        for per_request, clients in itertools.product(map(int, args.per_request.split(",")),
                                                      map(int, args.clients.split(","))):  # fmt: skip
            levels.append(load_level(port, clients, args.requests, args.seconds, texts, expected, per_request,
                                     server.pid))
            print(levels[-1], file=sys.stderr)
        twenty = load_level(port, 1, args.requests, args.seconds, [TWENTY_WORDS], predictor.predict([TWENTY_WORDS]), 1,
                            server.pid)
        levels.append({**twenty, "twenty_words": True})
        print(levels[-1], file=sys.stderr)
    finally:
        server.terminate()
        server.wait(60)
    predict_after = batch_throughput(predictor, texts)
    reference = (predict_before + predict_after) / 2
    for row in levels:
        row["vs_predict"] = round(row["statements_per_s"] / reference, 3)
    results = {"model": args.model, "format": args.format, "command": "python benchmarks/serve_load.py "
               + " ".join(argv if argv is not None else sys.argv[1:]), "machine_before": before,
               "machine_after": machine.describe(), "predict_before": predict_before, "predict_after": predict_after,
               "startup_s": round(startup, 2), "server_exit_code": server.returncode, "levels": levels}  # fmt: skip
    machine.save_results(out, "serve_load", results, markdown(results))


if __name__ == "__main__":
    main()
