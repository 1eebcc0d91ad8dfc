"""serve.py against hostile and careless clients (issue 40, items 7-9 and 12), and the model-server features:
real sockets against the real server on 127.0.0.1, every wait bounded."""

import concurrent.futures
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_serve import Server, _free_port

pytest.importorskip("fastapi")

HEAVY = ["great awful dull moving film plot story bland fun mess charming"] * 16  # 16 x 12 explained rows


@pytest.fixture(scope="module")
def exported_model(trained_workdir, tmp_path_factory):
    from lstm_jax.sentiment.deploy.export import export_model

    return export_model(trained_workdir, tmp_path_factory.mktemp("limits") / "model", ["onnx"])


@pytest.fixture(scope="module")
def server(exported_model):
    running = Server("--model", str(exported_model), "--request_timeout_s", "1", "--max_connections", "8",
                     "--max_url_bytes", "1024", "--max_head_bytes", "4096", "--max_queued_rows", "4",
                     "--max_batch", "4")  # fmt: skip
    yield running
    running.process.send_signal(signal.SIGTERM)
    _, stderr = running.process.communicate(timeout=60)
    assert running.process.returncode == 0 and "Traceback" not in stderr, stderr


def _raw(port: int, data: bytes, wait: float = 20.0) -> bytes:
    """Sends ``data`` on a new connection and returns what the server sends until it closes (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        try:
            connection.sendall(data)
        except OSError:  # the server answered and closed while we were still sending
            pass
        return _read_until_closed(connection, wait)


def _read_until_closed(connection: socket.socket, wait: float) -> bytes:
    answer, deadline = b"", time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            return answer + b"<still open>"
        if not chunk:
            break
        answer += chunk
    return answer


def _metric(server, series: str) -> float:
    text = server.request("GET", "/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


def test_a_head_or_url_too_long_is_refused_and_others_are_served(server):
    big = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        sending = thread.submit(_raw, server.port, big)
        assert server.request("GET", "/health")[0] == 200
        assert sending.result(60).startswith(b"HTTP/1.1 431 ")
    assert _raw(server.port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 414 ")
    assert _metric(server, 'lstm_jax_request_errors_total{reason="head_too_large"}') >= 1


@pytest.mark.parametrize("partial", [b"GET /health HTTP/1.1\r\nHo",
                                     b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 100\r\n\r\n{\"statements\": "])  # fmt: skip
def test_a_request_not_sent_in_time_is_answered_408_and_closed(server, partial):
    answer = _raw(server.port, partial, wait=30)
    assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"}"), answer[:200]
    assert server.request("GET", "/health")[0] == 200


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server):
    assert _raw(server.port, b"", wait=30) == b""


def test_connections_past_the_limit_get_503_with_retry_after(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.2)  # the server has accepted them
        answer = _raw(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower(), answer
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 30
    while server.request("GET", "/health")[0] != 200:  # the closed ones are gone
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_full_queue_answers_503_with_retry_after_and_nothing_fails(server):
    def ask(_):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("POST", "/predict", json.dumps({"statements": HEAVY, "explain": True}),
                           {"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")

    with concurrent.futures.ThreadPoolExecutor(6) as threads:
        answers = list(threads.map(ask, range(24)))
    assert {status for status, _ in answers} <= {200, 503} and (200, None) in answers
    assert (503, "1") in answers  # a 4-row queue cannot hold two 208-row requests


def test_a_client_leaving_mid_body_is_counted_apart(server):
    before = _metric(server, 'lstm_jax_request_errors_total{reason="client_disconnected"}')
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 1000\r\n\r\n{\"statements\": [\"gre")  # fmt: skip
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while _metric(server, 'lstm_jax_request_errors_total{reason="client_disconnected"}') < before + 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _metric(server, 'lstm_jax_requests_total{path="/predict",status="500"}') == 0


@pytest.mark.parametrize(
    "body, headers, status, fragment",
    [
        ('{"statements": [' + "1" * 5000 + "]}", {"Content-Type": "application/json"}, 400, "4,300 digits"),
        ('{"statements": ["great film"]}', {"Content-Type": "text/plain"}, 415, "application/json"),
        ('{"statements": ["great film"]}', {"Content-Type": ""}, 415, "application/json"),
        ('{"statements": ["great film"]}', {"Content-Type": "application/json", "Host": "evil.example:8000"}, 421,
         "Host"),
    ],
)
def test_cross_site_and_oversized_numbers_get_a_4xx(server, body, headers, status, fragment):
    answer_status, answer = server.request("POST", "/predict", body, headers)
    assert answer_status == status and fragment in answer["error"]


def test_probes_version_header_and_queue_metrics(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/model")
    response = connection.getresponse()
    version = json.loads(response.read())["version"]
    assert version.startswith("sha256:") and response.getheader("X-Model-Version") == version
    assert server.request("GET", "/livez") == (200, {"status": "alive"})
    assert server.request("GET", "/readyz")[1]["status"] == "ready"
    server.predict(["great film"])
    for series in ("lstm_jax_queue_seconds_count", "lstm_jax_batch_requests_count", "lstm_jax_batch_rows_count"):
        assert _metric(server, series) >= 1


def test_a_token_guards_the_api_but_not_the_probes(exported_model, tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    guarded = Server("--model", str(exported_model), "--token_file", str(tmp_path / "token"),
                     "--allowed_hosts", "api.example,127.0.0.1")  # fmt: skip
    try:
        body = {"statements": ["great film"]}
        assert guarded.request("POST", "/predict", body)[0] == 401
        assert guarded.request("POST", "/predict", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert guarded.request("GET", "/metrics")[0] == 401 and guarded.request("GET", "/readyz")[0] == 200
        authorized = {"Authorization": "Bearer s3cret-token", "Host": "api.example:443"}
        assert guarded.request("POST", "/predict", body, authorized)[0] == 200
        assert guarded.request("POST", "/predict", body, {"Authorization": "bearer  s3cret-token"})[0] == 200
        assert guarded.request("GET", "/model", None, {**authorized, "Host": "evil.example"})[0] == 421
    finally:
        assert guarded.stop() == 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--host", "0.0.0.0"), "--token_file FILE"),
        (("--host", "no-such-host.invalid"), "is not an address of this machine"),
        (("--token_file", "/nonexistent/token"), "is not a file"),
        (("--ssl_certfile", "/nonexistent/cert.pem"), "go together"),
        (("--ssl_certfile", "/nonexistent/cert.pem", "--ssl_keyfile", "/nonexistent/key.pem"), "cannot load the TLS"),
        (("--request_timeout_s", "0"), "--request_timeout_s must be"),
    ],
)
def test_unsafe_or_broken_start_up_flags_are_one_line(exported_model, args, fragment):
    result = subprocess.run([sys.executable, "serve.py", "--model", str(exported_model), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_and_sighup_finish_the_requests_in_flight_then_exit_0(exported_model, stop):
    draining = Server("--model", str(exported_model), "--max_batch", "4")

    def ask(_):
        return draining.request("POST", "/predict", {"statements": HEAVY, "explain": True})

    with concurrent.futures.ThreadPoolExecutor(16) as threads:
        answers = [threads.submit(ask, index) for index in range(16)]
        time.sleep(0.2)
        draining.process.send_signal(stop)
        results = [answer.result(120) for answer in answers]
    assert draining.process.wait(60) == 0
    assert all(status == 200 and len(answer["predictions"]) == 16 for status, answer in results)


def _first_line(args):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "serve.py", *args, "--port", str(port)], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        return process.stderr.readline().strip(), port, process
    except BaseException:
        process.kill()
        raise


def test_an_ipv6_host_prints_a_url_a_browser_opens(exported_model):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    line, port, process = _first_line(["--model", str(exported_model), "--host", "::", "--insecure"])
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    if "cannot listen" in line:
        pytest.skip(line)
    assert line.startswith(f"serving http://[::]:{port} ")


def test_tls_with_uvicorns_own_options(exported_model, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)  # fmt: skip
    line, port, process = _first_line(["--model", str(exported_model), "--ssl_certfile", str(cert),
                                       "--ssl_keyfile", str(key)])  # fmt: skip
    try:
        assert line.startswith(f"serving https://127.0.0.1:{port} "), line
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        deadline, status = time.monotonic() + 120, None
        while status != 200 and time.monotonic() < deadline:
            try:
                connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
                connection.request("GET", "/readyz")
                status = connection.getresponse().status
            except OSError:  # not listening yet
                time.sleep(0.1)
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
