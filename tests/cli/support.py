"""Run the real command line (``python -m sanic_chat ...``) as a newcomer would:
a fresh HOME, none of the caller's SANIC_CHAT_* settings, a deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: far above any start-up; reaching it means the process hung
DEADLINE_S = 60.0


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Result:
    """Run ``sanic-chat args...`` to its end; fail the test if it is still running
    at the deadline (killed then, so a hang never outlives the test)."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SANIC_CHAT_") and name != "XDG_DATA_HOME"
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sanic_chat", *args],
        env={**base, "HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd or home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung server and its workers are killed together
    )
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        stdout, stderr = process.communicate()
        pytest.fail(f"sanic-chat {' '.join(args)} still running after {DEADLINE_S} s:\n{stderr}")
    return Result(process.returncode, stdout, stderr)


def assert_one_clear_line(result: Result, expected: str) -> None:
    """Exit status 2, ``expected`` on stderr, and no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    assert expected in result.stderr, result.output
    assert result.returncode == 2, result.output


def assert_stopped_before_serving(result: Result, expected: str) -> None:
    """``serve`` refused to start: one clear line (``assert_one_clear_line``), and it
    never said it was serving."""
    assert_one_clear_line(result, expected)
    assert "serving on" not in result.output


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@contextmanager
def redis_that_stops_answering(redis_port: int, allowed: int) -> Iterator[int]:
    """A TCP proxy to Redis that forwards its first ``allowed`` connections, then
    closes every later one as soon as it is accepted: Redis seen going away
    between the command line's check and a worker's start-up."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        accepted = 0
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            accepted += 1
            if accepted > allowed:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", redis_port))
            sockets.extend((client, upstream))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for sock in sockets:
            sock.close()
