"""The tests' own throwaway PostgreSQL server does not outlive a test run killed with SIGKILL
(it held its port and folder until the machine restarted)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
STARTER = """
import sys
sys.path.insert(0, {here!r})
from postgres_server import PostgresServer
server = PostgresServer.start()
print(server.admin_url.port, flush=True)
import time
time.sleep(600)
"""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_test_run_takes_its_postgresql_server_down():
    from postgres_server import REQUIRE_ENV, find_bin_dir

    if find_bin_dir() is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("PostgreSQL's initdb is required here")
        pytest.skip("PostgreSQL's initdb was not found (apt-get install postgresql)")
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTER.format(here=str(HERE))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else line
    port = int(line)
    assert _listening(port)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 30
    while _listening(port):
        assert time.monotonic() < deadline, f"the server on port {port} outlived its test run"
        time.sleep(0.5)
