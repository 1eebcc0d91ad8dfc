"""The prediction service: micro-batching units, then the real server (serve.py) on a free loopback port."""

import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.sentiment.serve import explain
from lstm_jax.sentiment.serve.app import ApiError, Limits, parse_request
from lstm_jax.sentiment.serve.microbatch import FixedShapeScorer, MicroBatcher

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import browser as browser_tools  # noqa: E402

STATEMENTS = ["great wonderful film", "awful boring mess", "the plot was dull and tedious", "charming fun story",
              "a moving and brilliant actor", "it was bland"]  # fmt: skip


class _RecordingPredictor:
    """Probability = the row's first token / 1000; records every batch shape it is given."""

    max_len, length_bucket, batch_multiple = 12, 4, 2

    def __init__(self):
        self.shapes = []

    def run_batch(self, tokens, lengths):
        self.shapes.append(tokens.shape)
        return tokens[:, 0].astype(np.float32) / 1000


def test_scorer_pads_to_warmed_up_shapes_only_and_keeps_row_order():
    predictor = _RecordingPredictor()
    scorer = FixedShapeScorer(predictor, max_batch=10)
    assert scorer.batch_sizes == [2, 4, 8, 10] and scorer.times == [4, 8, 12]
    scorer.warm_up()
    warmed = set(predictor.shapes)
    assert warmed == set(scorer.shapes)
    rng = np.random.default_rng(0)
    for count in (1, 3, 9, 10, 23):
        lengths = rng.integers(0, 13, count).astype(np.int32)
        tokens = np.zeros((count, 12), np.int32)
        tokens[:, 0] = np.arange(count) + 1
        np.testing.assert_allclose(scorer(tokens, lengths), (np.arange(count) + 1) / 1000)
    assert set(predictor.shapes) == warmed  # nothing new to compile


def test_micro_batcher_gathers_concurrent_requests_and_answers_each_its_own_rows():
    calls = []
    release = threading.Event()

    def score(tokens, lengths):
        calls.append(len(lengths))
        release.wait(5)  # the first call holds the worker while the others queue up
        return tokens[:, 0].astype(np.float32)

    batcher = MicroBatcher(score, max_batch=64, max_wait=0.0)
    batcher.start()
    assert batcher.ready.wait(5)
    first = batcher.submit(np.full((1, 3), -1, np.int32), np.ones(1, np.int32))
    time.sleep(0.05)
    requests = []
    for index in range(20):
        rows = index % 3 + 1
        tokens = np.zeros((rows, 3), np.int32)
        tokens[:, 0] = 100 * index + np.arange(rows)
        requests.append((tokens[:, 0], batcher.submit(tokens, np.ones(rows, np.int32))))
    release.set()
    assert first.result(5).tolist() == [-1]
    for expected, future in requests:
        assert future.result(5).tolist() == expected.tolist()
    batcher.close()
    assert calls[0] == 1 and len(calls) < 5 and sum(calls) == 1 + sum(len(e) for e, _ in requests)


def test_a_failing_model_call_fails_its_requests_and_not_the_worker():
    outcomes = iter([RuntimeError("device lost"), None])

    def score(tokens, lengths):
        error = next(outcomes)
        if error:
            raise error
        return np.ones(len(lengths), np.float32)

    batcher = MicroBatcher(score, max_batch=4, max_wait=0.0)
    batcher.start()
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.submit(np.zeros((1, 2), np.int32), np.ones(1, np.int32)).result(5)
    assert batcher.submit(np.zeros((2, 2), np.int32), np.ones(2, np.int32)).result(5).tolist() == [1.0, 1.0]
    batcher.close()


def test_occluded_rows_leave_out_one_token_each():
    rows, lengths = explain.occluded_rows(np.array([5, 6, 7, 0, 0], np.int32), 3)
    assert rows.tolist() == [[6, 7, 0, 0, 0], [5, 7, 0, 0, 0], [5, 6, 0, 0, 0]] and lengths.tolist() == [2, 2, 2]
    rows, lengths = explain.occluded_rows(np.array([9, 0], np.int32), 1)
    assert rows.tolist() == [[0, 0]] and lengths.tolist() == [0]


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"statements": ["caf\xe9"]}', 400, "not UTF-8"),
        (b"[" * 100000 + b"]" * 100000, 400, "nested too deeply"),
        (b'["a"]', 422, "must be a JSON object"),
        (b'{"statements": "one"}', 422, "non-empty list"),
        (b'{"statements": []}', 422, "non-empty list"),
        (b'{"statements": [1]}', 422, "statements[0] is int"),
        (b'{"statements": ["ok", "  "]}', 422, "statements[1] is empty"),
        (b'{"statements": ["\\ud800 bad"]}', 422, "statements[0] holds an unpaired surrogate"),
        (b'{"statements": ["ok"], "explain": "yes"}', 422, "'explain' must be true or false"),
        (b'{"statement": ["ok"]}', 422, "must be a JSON object"),
        (b'{"statements": ["ok"], "threshold": 1}', 422, "unknown field 'threshold'"),
        (json.dumps({"statements": ["x"] * 4}).encode(), 413, "at most 3"),
        (json.dumps({"statements": ["x"] * 3, "explain": True}).encode(), 413, "at most 2 with explain"),
        (json.dumps({"statements": ["x" * 11]}).encode(), 413, "11 characters; at most 10"),
    ],
)
def test_parse_request_names_what_is_wrong(body, status, fragment):
    with pytest.raises(ApiError) as refused:
        parse_request(body, Limits(max_statements=3, max_chars=10, max_explained=2))
    assert refused.value.status == status and fragment in refused.value.message


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """serve.py in a subprocess on a free loopback port; ``request`` answers (status, parsed JSON or text)."""

    def __init__(self, *args: str):
        self.port = _free_port()
        environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.process = subprocess.Popen([sys.executable, "serve.py", *args, "--port", str(self.port)], cwd=ROOT,
                                        env=environment, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError("serve.py was not ready within 240 s")

    def request(self, method: str, path: str, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            payload = json.dumps(body) if isinstance(body, dict | list) else body
            headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
            connection.request(method, path, payload, headers)
            response = connection.getresponse()
            data = response.read()
            kind = response.getheader("content-type", "")
            return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()
        finally:
            connection.close()

    def predict(self, statements, explain_tokens=False):
        status, answer = self.request("POST", "/predict", {"statements": statements, "explain": explain_tokens})
        assert status == 200, answer
        return answer["predictions"]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture(scope="module")
def exported_model(trained_workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "model"
    result = subprocess.run([sys.executable, "export.py", "--workdir", str(trained_workdir), "--output", str(folder),
                             "--format", "onnx"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def server(exported_model):
    running = Server("--model", str(exported_model), "--max_statements", "64", "--max_chars", "2000",
                     "--max_body_bytes", "100000", "--max_batch", "16")  # fmt: skip
    yield running
    assert running.stop() == 0


def _predict_py(tmp_path, statements, *source):
    (tmp_path / "in.txt").write_text("\n".join(statements) + "\n")
    result = subprocess.run([sys.executable, "predict.py", *source, "--input", str(tmp_path / "in.txt"), "--output",
                             str(tmp_path / "out.jsonl"), "--format", "jsonl"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def _assert_same_answers(predictions, expected):
    assert [p["statement"] for p in predictions] == [e["statement"] for e in expected]
    assert [p["label"] for p in predictions] == [e["sentiment"] for e in expected]
    np.testing.assert_allclose([p["probability_positive"] for p in predictions],
                               [e["probability_positive"] for e in expected], atol=2e-6)  # fmt: skip


def test_answers_equal_predict_py(server, exported_model, tmp_path):
    statements = STATEMENTS + ["great " * 30 + "awful"]  # longer than max_len: truncated alike
    _assert_same_answers(server.predict(statements), _predict_py(tmp_path, statements, "--model", str(exported_model)))


def test_a_checkpoint_is_served_like_predict_py_serves_it(trained_workdir, tmp_path):
    checkpoint_server = Server("--workdir", str(trained_workdir), "--max_batch", "8")
    try:
        predictions = checkpoint_server.predict(STATEMENTS)
        assert checkpoint_server.request("GET", "/model")[1]["format"] == "checkpoint"
    finally:
        assert checkpoint_server.stop() == 0
    _assert_same_answers(predictions, _predict_py(tmp_path, STATEMENTS, "--workdir", str(trained_workdir)))


def test_explanations_are_the_change_when_each_word_is_left_out(server, exported_model):
    import lstm_jax.deploy as deploy

    model = deploy.load(exported_model)
    (prediction,) = server.predict(["the plot was dull but charming"], explain_tokens=True)
    words = [token["token"] for token in prediction["tokens"]]
    assert words == ["the", "plot", "was", "dull", "but", "charming"] and prediction["tokens_not_read"] == 0
    without = model.predict([" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))])
    expected = model.predict([" ".join(words)])[0] - without
    np.testing.assert_allclose([token["contribution"] for token in prediction["tokens"]], expected, atol=2e-6)
    vocabulary = set(model.vocabulary.words)
    assert [token["known"] for token in prediction["tokens"]] == [word in vocabulary for word in words]
    assert not all(word in vocabulary for word in words)  # "but" is not in the tiny model's vocabulary


def test_64_concurrent_clients_each_get_their_own_answers(server, exported_model):
    import lstm_jax.deploy as deploy

    words = "great wonderful awful boring dull film plot moving bland story".split()
    rng = random.Random(0)
    pool = [" ".join(rng.choices(words, k=rng.randint(1, 14))) for _ in range(300)]
    expected = dict(zip(pool, deploy.load(exported_model).predict(pool).tolist()))

    def client(seed):
        chooser, wrong = random.Random(seed), 0
        for _ in range(20):
            statements = chooser.sample(pool, chooser.randint(1, 4))
            predictions = server.predict(statements)
            wrong += [p["statement"] for p in predictions] != statements
            wrong += sum(abs(p["probability_positive"] - expected[p["statement"]]) > 2e-6 for p in predictions)
        return wrong

    with concurrent.futures.ThreadPoolExecutor(64) as threads:
        assert sum(threads.map(client, range(64))) == 0
    status, metrics = server.request("GET", "/metrics")
    batches = float(metrics.split("lstm_jax_batch_rows_count ")[1].split()[0])
    assert status == 200 and batches < 64 * 20  # requests shared model calls


@pytest.mark.parametrize(
    "method, path, body, headers, status, fragment",
    [
        ("POST", "/predict", b"{oops", {}, 400, "not valid JSON"),
        ("POST", "/predict", b'{"statements": ["caf\xe9 bad"]}', {}, 400, "not UTF-8"),
        ("POST", "/predict", {"statements": "one"}, {}, 422, "non-empty list"),
        ("POST", "/predict", {"statements": []}, {}, 422, "non-empty list"),
        ("POST", "/predict", {"statements": [None]}, {}, 422, "statements[0] is NoneType"),
        ("POST", "/predict", {"statements": ["x"] * 65}, {}, 413, "at most 64"),
        ("POST", "/predict", {"statements": ["x" * 2001]}, {}, 413, "at most 2000"),
        ("POST", "/predict", b"x" * 100001, {}, 413, "over 100000 bytes"),
        ("POST", "/predict", b"", {}, 400, "not valid JSON"),
        ("GET", "/predict", None, {}, 405, "Method Not Allowed"),
        ("GET", "/nothing-here", None, {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_goes_on(server, method, path, body, headers,
                                                                          status, fragment):  # fmt: skip
    answer_status, answer = server.request(method, path, body, headers)
    assert answer_status == status and fragment in answer["error"]
    assert server.predict(["great film"])[0]["statement"] == "great film"


def test_a_body_streamed_past_the_limit_is_refused(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    for _ in range(30):
        chunk = b'{"statements": ["' + b"a" * 4000
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    assert response.status == 413 and "over 100000 bytes" in json.loads(response.read())["error"]


def test_health_model_metrics_and_page(server, exported_model):
    manifest = json.loads((exported_model / "manifest.json").read_text())
    version = "sha256:" + hashlib.sha256((exported_model / "manifest.json").read_bytes()).hexdigest()
    assert server.request("GET", "/health") == (200, {"status": "ready", "format": "onnx", "threshold": 0.5,
                                                      "step": manifest["model"]["step"], "max_len": 12,
                                                      "version": version})  # fmt: skip
    assert server.request("GET", "/model")[1] == {**manifest, "format": "onnx", "version": version}
    server.request("POST", "/predict", b"{oops")
    status, metrics = server.request("GET", "/metrics")
    assert status == 200
    for series in ('lstm_jax_requests_total{path="/predict",status="200"}', "lstm_jax_request_errors_total{reason=",
                   "lstm_jax_request_duration_seconds_bucket", "lstm_jax_batch_rows_bucket",
                   "lstm_jax_statements_total"):  # fmt: skip
        assert series in metrics
    status, page = server.request("GET", "/")
    assert status == 200 and '<script src="page.js">' in page and "http" not in page.split("<body>")[1]
    assert server.request("GET", "/page.js")[0] == 200 and server.request("GET", "/page.css")[0] == 200


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(exported_model):
    draining = Server("--model", str(exported_model), "--max_batch", "4")
    heavy = ["great awful dull moving film plot story bland fun mess charming"] * 16  # 16 x 12 rows each

    sent = threading.Semaphore(0)

    def ask():
        connection = http.client.HTTPConnection("127.0.0.1", draining.port, timeout=60)
        connection.request("POST", "/predict", json.dumps({"statements": heavy, "explain": True}),
                           {"Content-Type": "application/json"})  # fmt: skip
        sent.release()
        response = connection.getresponse()
        return (response.status, json.loads(response.read())), time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(48) as threads:
        answers = [threads.submit(ask) for _ in range(48)]
        for _ in range(48):  # every request sent (a busy machine starts 48 client threads slowly), then a moment
            assert sent.acquire(timeout=60)
        time.sleep(0.2)
        signalled = time.monotonic()
        draining.process.send_signal(signal.SIGTERM)
        results = [answer.result(60) for answer in answers]
    assert draining.process.wait(60) == 0
    assert all(status == 200 and len(answer["predictions"]) == 16 for (status, answer), _ in results)
    assert max(finished for _, finished in results) > signalled  # some were still in flight at the signal
    with pytest.raises(OSError):
        draining.request("GET", "/health")


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((), "--workdir (a checkpoint) or --model"),
        (("--model", "/nonexistent/model"), "does not exist"),
        (("--model", "M", "--port", "70000"), "--port must be between 0 and 65535"),
        (("--model", "M", "--max_batch", "0"), "--max_batch must be between 1 and 4096"),
    ],
)
def test_bad_start_up_flags_are_one_line(args, fragment, exported_model):
    args = tuple(str(exported_model) if arg == "M" else arg for arg in args)
    result = subprocess.run([sys.executable, "serve.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(exported_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run([sys.executable, "serve.py", "--model", str(exported_model), "--port", port], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_page_in_a_real_browser_shows_labels_and_word_colours(server, tmp_path):
    browser, why = browser_tools.chromium()
    if browser is None:
        pytest.skip(why)
    statements = ["great wonderful film", "the plot was dull and boring"]
    try:
        shown = browser_tools.ask_page(browser, f"http://127.0.0.1:{server.port}/", statements)
        screenshot = tmp_path / "page.png"
        browser.save_screenshot(str(screenshot))
    finally:
        browser.quit()
    expected = server.predict(statements, explain_tokens=True)
    assert [result["label"] for result in shown] == [prediction["label"] for prediction in expected]
    for result, prediction in zip(shown, expected):
        assert [word for word, _, _ in result["tokens"]] == [token["token"] for token in prediction["tokens"]]
        np.testing.assert_allclose([value for _, value, _ in result["tokens"]],
                                   [token["contribution"] for token in prediction["tokens"]])  # fmt: skip
        for _, value, classes in result["tokens"]:  # coloured by the sign of the contribution (tiny ones plain)
            if abs(value) >= 0.005:
                assert ("pushes-positive" if value > 0 else "pushes-negative") in classes.split()
    assert any("pushes-" in classes for result in shown for _, _, classes in result["tokens"])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000
