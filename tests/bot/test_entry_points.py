"""Settings, the entry points' one-line errors, the terminal chat, and import rules."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from bot_helpers import EchoModel

from xianliao.bot.config import Settings
from xianliao.bot.runtime import RedactFilter
from xianliao.bot.service import DialogueService
from xianliao.bot.terminal import chat_loop
from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.repositories import ExchangeFilter, ExchangeRepository

pytest_plugins = ["bot_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_BASE_URL",
    "ADMIN_USER_IDS",
    "DATABASE_URL",
    "MODEL_PATH",
    "DECODE_OPTIONS",
    "WEBHOOK_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers  # main() configures logging; undo it for the next tests
    root.setLevel(level)


def test_settings_from_env_file(tmp_path):
    env = tmp_path / "my.env"
    env.write_text(
        "TELEGRAM_BOT_TOKEN=1:abc\n"
        "TELEGRAM_BASE_URL=http://127.0.0.1:8081/bot\n"
        "ADMIN_USER_IDS=12, 34\n"
        "DATABASE_URL=sqlite:////tmp/x.db\n"
        "MODEL_PATH=runs/m.pt\n"
        'DECODE_OPTIONS={"beam_size": 3}\n'
        "RATE_LIMIT_MESSAGES=5\n"
    )
    s = Settings(_env_file=env)
    assert s.token() == "1:abc" and "abc" not in repr(s)
    assert s.admin_user_ids == frozenset({12, 34})
    assert s.telegram_base_url == "http://127.0.0.1:8081/bot"
    assert s.database_url == "sqlite:////tmp/x.db" and s.model_path == Path("runs/m.pt")
    assert s.decode_options == {"beam_size": 3} and s.rate_limit_messages == 5


def test_env_example_lists_every_setting_and_loads():
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, name
    defaults = Settings(_env_file=ROOT / ".env.example")
    assert defaults.token() is None and defaults.torch_threads is None
    assert defaults.model_dump() == Settings(_env_file=None).model_dump()


def test_bot_without_token_says_what_to_do(capsys):
    from xianliao.bot.app import main

    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "TELEGRAM_BOT_TOKEN is not set" in err and "xianliao chat" in err


def test_bot_with_missing_checkpoint_names_the_path(capsys, monkeypatch, tmp_path):
    from xianliao.bot.app import main

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:secret-token")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "nope.pt"))
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.pt" in err and "xianliao train" in err
    assert "secret-token" not in err


def test_bad_checkpoint_is_one_line(capsys, tmp_path):
    from xianliao.bot.terminal import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([str(bad), "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.pt" in err


def test_webhook_without_a_secret_is_refused(capsys, monkeypatch):
    from xianliao.bot.app import main

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:abc")
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example.com/hook")
    assert main(["--env-file", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip()
    assert "WEBHOOK_SECRET is not" in err and len(err.splitlines()) == 1 and "abc" not in err


def test_bad_setting_is_reported(capsys, monkeypatch):
    from xianliao.bot.app import main

    monkeypatch.setenv("ADMIN_USER_IDS", "alice")
    assert main([]) == 2
    assert "ADMIN_USER_IDS" in capsys.readouterr().err


def test_terminal_chat_piped_one_line_per_input(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/chat.db")
    init_schema(engine)
    sessions = session_factory(engine)
    service = DialogueService(EchoModel(), sessions=sessions)
    out = io.StringIO()
    answered = chat_loop(service, io.StringIO("你好\n\n😀\n多行\n"), out, interactive=False)
    service.close()
    lines = out.getvalue().splitlines()
    assert answered == 4 and len(lines) == 4
    assert lines[0] == "你说：你好" and lines[1] and lines[2] == "你说：😀"
    with sessions() as s:
        assert ExchangeRepository(s).count(ExchangeFilter(source="terminal")) == 3


def test_terminal_chat_interactive_prompts_and_quits():
    service = DialogueService(EchoModel(), sessions=None)
    out = io.StringIO()
    chat_loop(service, io.StringIO("你好\n\n/quit\n没读到\n"), out, interactive=True)
    service.close()
    text = out.getvalue()
    assert "你> " in text and "闲聊> 你说：你好" in text and "没读到" not in text


def test_redact_filter_hides_the_token_in_messages_and_tracebacks():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s", ("/bot1:SECRET/x",), None)
    try:
        raise RuntimeError("failed at /bot1:SECRET/getMe")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    RedactFilter(["1:SECRET"]).filter(record)
    formatted = logging.Formatter().format(record)
    assert "SECRET" not in formatted and "<TOKEN>" in formatted


def test_chat_and_service_do_not_import_telegram():
    code = (
        "import sys; import xianliao.bot.terminal, xianliao.bot.service, xianliao.bot.runtime; "
        "bad = [m for m in sys.modules if m == 'telegram' or m.startswith('telegram.')]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("webhook", [False, True])
def test_bot_main_wires_polling_or_webhook(monkeypatch, tmp_path, webhook):
    import xianliao.bot.app as app_module

    calls = {}

    async def fake_check(settings):
        return "xianliao_test_bot"

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:abc")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    if webhook:
        monkeypatch.setenv("WEBHOOK_URL", "https://bot.example.com/hooks/xianliao")
        monkeypatch.setenv("WEBHOOK_SECRET", "s3")
        monkeypatch.setenv("WEBHOOK_PORT", "9443")
    monkeypatch.setattr(
        app_module, "create_service", lambda s, **kw: DialogueService(EchoModel(), sessions=None)
    )
    monkeypatch.setattr(app_module, "_check_bot_api", fake_check)
    monkeypatch.setattr(
        app_module.Application, "run_polling", lambda self, **kw: calls.update(polling=kw)
    )
    monkeypatch.setattr(
        app_module.Application, "run_webhook", lambda self, **kw: calls.update(webhook=kw)
    )
    assert app_module.main([]) == 0
    if webhook:
        kw = calls["webhook"]
        assert kw["url_path"] == "hooks/xianliao" and kw["port"] == 9443
        assert kw["secret_token"] == "s3" and kw["listen"] == "127.0.0.1"
        assert kw["webhook_url"] == "https://bot.example.com/hooks/xianliao"
    else:
        assert "polling" in calls and "webhook" not in calls
