"""Where no PostgreSQL server can be had the PostgreSQL variants skip and say why, except
where XIANLIAO_REQUIRE_POSTGRES=1 (CI): there the same is an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("required", [False, True])
def test_no_server_skips_with_a_reason_unless_required(tmp_path, required):
    (tmp_path / "test_inner.py").write_text("def test_db(database_url):\n    pass\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        # nothing listens on port 1: the server named here cannot be reached
        "XIANLIAO_TEST_POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/none",
        "XIANLIAO_REQUIRE_POSTGRES": "1" if required else "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest",
         "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    if required:
        assert done.returncode == 1, out
        assert "1 passed, 1 error" in out and "PostgreSQL is required here" in out
    else:
        assert done.returncode == 0, out
        assert "1 passed, 1 skipped" in out and "no PostgreSQL server: cannot connect" in out
