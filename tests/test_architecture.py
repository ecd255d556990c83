"""The dependency rules of DESIGN.md, checked by parsing every import."""

import ast
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
PROJECT = {"bot", "model", "storage", "training", "xianliao"}

ALLOWED = {
    # rjieba is the optional, jieba-compatible fast path of the tokenizer
    "model": STDLIB | {"torch", "numpy", "jieba", "rjieba", "model"},
    "storage": STDLIB | {"sqlalchemy", "storage"},
    "training": STDLIB
    | {"torch", "numpy", "tqdm", "yaml", "chatterbot_corpus", "model", "storage", "training"},
    "bot": STDLIB
    | {
        "telegram",
        "pydantic",
        "pydantic_settings",
        "model",
        "storage",
        "bot",
        "sqlalchemy",
        "torch",
        "uvloop",  # optional: the event loop of `xianliao bot` when installed
    },
}


def _imports(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    bad = sorted(
        {(str(p.relative_to(ROOT)), m) for p, m in _imports(package) if m not in ALLOWED[package]}
    )
    assert bad == []


def test_nothing_imports_bot_or_training_but_the_entry_point():
    for package in ("model", "storage", "training", "bot"):
        for path, module in _imports(package):
            if module == package:
                continue
            assert module not in {"bot", "training", "xianliao"} - {package}, (path, module)


def test_chat_and_training_never_load_telegram():
    code = (
        "import sys, bot.terminal, bot.review_cli, bot.retrain, training.cli, training.retrain; "
        "sys.exit(1 if 'telegram' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_every_cli_command_resolves_and_has_help():
    import importlib

    from xianliao.cli import COMMANDS, main

    for name, (module, func, _) in COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), func)), name
    assert main([]) == 2 and main(["--help"]) == 0 and main(["nope"]) == 2
    for name in COMMANDS:
        try:
            code = main([name, "--help"])
        except SystemExit as exit_:
            code = exit_.code
        assert code == 0, name


def test_entry_point_asks_openmp_for_passive_waits(monkeypatch):
    from xianliao.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with contextlib.suppress(SystemExit):
        main(["eval", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's choice wins
    with contextlib.suppress(SystemExit):
        main(["eval", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("command", ["chat", "bot", "retrain", "promote", "rollback", "quickstart"])
def test_a_bad_setting_is_one_line_for_every_entry_point(command, monkeypatch, capsys):
    from xianliao.cli import main

    monkeypatch.setenv("ADMIN_USER_IDS", "alice")
    args = [command, "--env-file", "/dev/null"] + (["x.pt"] if command == "promote" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"xianliao {command}: setting ADMIN_USER_IDS: Value error, ADMIN_USER_IDS "
        "must be numeric Telegram user ids separated by commas"
    ]
