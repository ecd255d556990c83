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
PROJECT = {"bot", "console", "model", "ops", "storage", "training", "xianliao"}
# the subpackages of the one import package, xianliao, whose folders are at the top level
SUBSYSTEMS = PROJECT - {"xianliao"}

ALLOWED = {
    # rjieba is the optional, jieba-compatible fast path of the tokenizer
    "model": STDLIB | {"torch", "numpy", "jieba", "rjieba", "model"},
    "storage": STDLIB | {"sqlalchemy", "alembic", "storage"},
    # admin operations: no Telegram, no bot; training runs only as a subprocess; itsdangerous
    # signs the console's login links, which the bot makes and the console checks
    "ops": STDLIB | {"sqlalchemy", "itsdangerous", "model", "storage", "ops"},
    "training": STDLIB
    | {
        "torch",
        "numpy",
        "tqdm",
        "yaml",
        "chatterbot_corpus",
        "matplotlib",
        "model",
        "storage",
        "training",
    },
    "bot": STDLIB
    | {
        "telegram",
        "pydantic",
        "pydantic_settings",
        "model",
        "ops",
        "storage",
        "bot",
        "sqlalchemy",
        "torch",
        "uvloop",  # optional: the event loop of `xianliao bot` when installed
        "prometheus_client",  # /metrics of the bot process (bot/health.py)
    },
    # the admin web console: a front end like bot, calling ops; never bot or Telegram
    "console": STDLIB
    | {
        "starlette",
        "jinja2",
        "uvicorn",
        "itsdangerous",
        "pydantic",
        "pydantic_settings",
        "sqlalchemy",
        "model",
        "ops",
        "storage",
        "console",
    },
}


def _subsystem(module: str) -> str:
    """``xianliao.model.decode`` -> ``model``; ``xianliao.cli`` -> ``xianliao``; a bare project
    name (``import model``) is named so that no rule allows it: it would not import installed."""
    parts = module.split(".")
    if parts[0] == "xianliao":
        return parts[1] if len(parts) > 1 and parts[1] in SUBSYSTEMS else "xianliao"
    return f"bare {parts[0]}" if parts[0] in SUBSYSTEMS else parts[0]


def _imports(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, _subsystem(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, _subsystem(node.module)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(package):
    bad = sorted(
        {(str(p.relative_to(ROOT)), m) for p, m in _imports(package) if m not in ALLOWED[package]}
    )
    assert bad == []


def test_nothing_imports_bot_or_training_but_the_entry_point():
    for package in ("model", "ops", "storage", "training", "bot", "console"):
        for path, module in _imports(package):
            if module == package:
                continue
            assert module not in {"bot", "training", "xianliao"} - {package}, (path, module)


def test_chat_and_training_never_load_telegram():
    code = (
        "import sys, xianliao.bot.terminal, xianliao.bot.review_cli, xianliao.ops.supervisor, "
        "xianliao.training.cli, xianliao.training.retrain; "
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


def test_tests_and_benchmarks_import_the_installed_package_only():
    """``import model`` works in the repository by accident of the working directory and
    nowhere else; every import goes through ``xianliao``."""
    for folder in ("tests", "bench", "xianliao"):
        bare = sorted(
            {(str(p.relative_to(ROOT)), m) for p, m in _imports(folder) if m.startswith("bare ")}
        )
        assert bare == [], folder


def test_the_wheel_installs_one_package_with_its_data(tmp_path):
    """``pip install .`` puts ``xianliao`` (and its metadata) in site-packages, nothing else,
    with the blocklist and the everyday corpus inside."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("xianliao-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "xianliao",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    assert "xianliao/model/data/blocklist.txt" in names
    assert "xianliao/training/data/everyday_zh.tsv" in names
    assert "xianliao/bot/service.py" in names and "xianliao/storage/db.py" in names
    assert "xianliao/storage/migrations/env.py" in names
    assert "xianliao/storage/migrations/versions/0001_initial.py" in names
    assert "xianliao/console/templates/base.html" in names
    assert "xianliao/console/static/console.css" in names
