"""``xianliao console``: hash-token, link, bad settings as one line, --help."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("starlette", reason="the console's web stack is not installed")

from xianliao.console.auth import LinkTokens  # noqa: E402
from xianliao.console.cli import main  # noqa: E402
from xianliao.console.config import verify_token  # noqa: E402


def test_hash_token_reads_stdin_never_argv(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-admin-token\n"))
    assert main(["hash-token"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("CONSOLE_TOKEN_HASH=scrypt$")
    assert verify_token("a-long-enough-admin-token", line.split("=", 1)[1])
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-token"]) == 2
    assert "at least 16" in capsys.readouterr().err


def test_link_prints_a_working_one_time_link(monkeypatch, capsys):
    monkeypatch.setenv("CONSOLE_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("ADMIN_USER_IDS", "77,5")
    assert main(["link", "--env-file", "/dev/null", "--url", "https://c.example/"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://c.example/login/link?t=")
    links = LinkTokens("k" * 32, frozenset({5, 77}))
    assert links.admin_for(url.split("t=", 1)[1]) == 5  # the lowest admin id


def test_link_needs_a_secret_key(monkeypatch, capsys):
    monkeypatch.delenv("CONSOLE_SECRET_KEY", raising=False)
    monkeypatch.setenv("ADMIN_USER_IDS", "5")
    assert main(["link", "--env-file", "/dev/null"]) == 2
    assert "CONSOLE_SECRET_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CONSOLE_TOKEN_HASH", "plaintext-token", "must be the line 'xianliao console hash-token'"),
        ("ADMIN_USER_IDS", "alice", "must be numeric Telegram user ids"),
    ],
)
def test_a_bad_setting_is_one_line(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    assert main(["--env-file", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith(f"xianliao console: setting {name}")
        and message in err[0]
    )


def test_a_missing_database_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    assert main(["--env-file", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no database" in err[0]
    assert not (tmp_path / "none.db").exists()


def test_the_console_never_loads_telegram_or_the_bot():
    import subprocess
    import sys

    code = (
        "import sys, xianliao.console.app, xianliao.console.cli; "
        "bad = [m for m in sys.modules if m.startswith(('telegram', 'xianliao.bot'))]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
