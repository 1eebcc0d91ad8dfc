"""Joining a multi-process run (``jax.distributed``), without waiting silently or dying in C++.

When a peer or the coordinator is missing, ``jax.distributed.initialize`` waits silently for its timeout and
then aborts the process with a C++ stack dump. So when the run is described by flags (a coordinator address,
a process count and this process's id), the processes first meet in a small handshake of our own on the
coordinator's address: process 0 listens there, the others connect (retrying while it starts), and once all
have said hello process 0 tells everyone to go, closes its socket and JAX takes the port over. Each process
says at once what it waits for; at ``--config.initialization_timeout`` every process ends with one line
naming what was missing (exit 2). Clusters that JAX detects on its own (SLURM, TPU, MPI) skip the handshake.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time

import numpy as np

from lstm_jax.sentiment.errors import UserError

_HELLO = "lstm_jax hello {process_id} {num_processes}\n"
_GO = b"go\n"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) checked and resolved, or a one-line error saying what is wrong."""
    host, separator, port = address.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--config.coordinator_address={address!r} must be HOST:PORT with a port from 1 to 65535, "
                        "e.g. 10.0.0.1:29500")  # fmt: skip
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"--config.coordinator_address={address!r}: host {host!r} is unknown ({error.strerror}); "
                        "give process 0's address or name") from None  # fmt: skip
    return host, int(port)


def _say(process_id: int, num_processes: int, message: str) -> None:
    print(f"process {process_id} of {num_processes}: {message}", file=sys.stderr, flush=True)


def _coordinate(host: str, port: int, num_processes: int, timeout: float) -> None:
    """Process 0: waits for every other process's hello, then sends each one go."""
    try:
        listener = socket.create_server((host, port), reuse_port=False)
    except OSError as error:
        raise UserError(f"process 0 cannot listen on {host}:{port} ({error.strerror}); is this machine the "
                        "coordinator, and is the port free?") from None  # fmt: skip
    deadline, peers = time.monotonic() + timeout, {}
    _say(0, num_processes, f"waiting up to {timeout:g} s at {host}:{port} for processes 1-{num_processes - 1} "
                           "(--config.initialization_timeout)")  # fmt: skip
    with listener:
        while len(peers) < num_processes - 1:
            listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                missing = sorted(set(range(1, num_processes)) - set(peers))
                for waiting in peers.values():
                    waiting.close()
                raise UserError(f"process 0: process(es) {', '.join(map(str, missing))} of {num_processes} did not "
                                f"join within {timeout:g} s at {host}:{port}; start them with the same flags and "
                                "their --config.process_id, or raise --config.initialization_timeout"
                                ) from None  # fmt: skip
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                words = connection.makefile("rb").readline(200).decode("ascii", "replace").split()
            except OSError:
                words = []
            if words[:2] != ["lstm_jax", "hello"] or len(words) != 4 or words[3] != str(num_processes):
                connection.close()  # not one of ours (or another run's): ignore it
                continue
            peers[int(words[2])] = connection
        for connection in peers.values():
            connection.sendall(_GO)
            connection.close()


def _join(host: str, port: int, process_id: int, num_processes: int, timeout: float) -> None:
    """Process > 0: connects to process 0 (retrying while it starts), says hello, waits for go."""
    deadline = time.monotonic() + timeout
    _say(process_id, num_processes, f"waiting up to {timeout:g} s for process 0 at {host}:{port} "
                                    "(--config.initialization_timeout)")  # fmt: skip
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.001))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise UserError(f"process {process_id}: process 0 did not answer at {host}:{port} within {timeout:g} "
                                "s; start it (--config.process_id=0) on that machine, or check the address"
                                ) from None  # fmt: skip
            time.sleep(0.2)
    with connection:
        connection.sendall(_HELLO.format(process_id=process_id, num_processes=num_processes).encode())
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            answer = connection.makefile("rb").readline(10)
        except OSError:
            answer = b""
    if answer != _GO:
        raise UserError(f"process {process_id}: process 0 at {host}:{port} did not start the run within {timeout:g} "
                        "s (another process is missing, or process 0 stopped); see process 0's message")  # fmt: skip


def maybe_initialize(config) -> None:
    """Joins a multi-process run through ``jax.distributed`` (CPU processes talk through gloo)."""
    import jax

    if not (config.distributed or config.num_processes > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    if config.num_processes and config.process_id >= config.num_processes:
        raise UserError(f"--config.process_id={config.process_id} must be below --config.num_processes="
                        f"{config.num_processes}")  # fmt: skip
    described = config.coordinator_address and config.num_processes > 1 and config.process_id >= 0
    if config.coordinator_address:
        host, port = parse_address(config.coordinator_address)
    if described and config.process_id == 0:
        _coordinate(host, port, config.num_processes, config.initialization_timeout)
    elif described:
        _join(host, port, config.process_id, config.num_processes, config.initialization_timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address or None,
            num_processes=config.num_processes or None,
            process_id=config.process_id if config.process_id >= 0 else None,
            initialization_timeout=int(config.initialization_timeout),
        )
    except ValueError as error:  # JAX could not tell the run's shape (no cluster detected, no address given)
        raise UserError(f"cannot join a multi-process run: {error}; give --config.coordinator_address=HOST:PORT, "
                        "--config.num_processes and --config.process_id (or run under SLURM, MPI or on a TPU "
                        "slice, which JAX detects)") from None  # fmt: skip
    _check_same_settings(config)


def _check_same_settings(config) -> None:
    """Every process must run the same job: compare a digest of the settings that shape the computation."""
    from jax.experimental import multihost_utils

    excluded = ("process_id", "compilation_cache_dir", "initialization_timeout")
    shared = {k: v for k, v in config.to_dict().items() if k not in excluded}
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).digest()[:16]
    digests = multihost_utils.process_allgather(np.frombuffer(digest, np.int32))
    if not (digests == digests[0]).all():
        raise UserError("the processes of this run were started with different settings; start every process "
                        "with the same config and flags (only --config.process_id differs)")  # fmt: skip
