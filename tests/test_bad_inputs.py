"""Bad inputs to the ``xianliao`` commands: one line on stderr that says what is wrong, never a
traceback, and no side effect (no database created, no model put live, no run left running).

Each row runs ``xianliao.cli.main(argv)`` in this process. ``{name}`` in an argument or an
environment value is a path of the workspace made by the ``ws`` fixture.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.models import TrainingRun
from xianliao.storage.repositories import (
    ChatRepository,
    ExchangeRepository,
    TrainingRunRepository,
    UserRepository,
)

ENV_NAMES = (
    "DATABASE_URL",
    "MODEL_PATH",
    "MODEL_DEVICE",
    "MODEL_QUANTIZE",
    "BASE_DATA_DIR",
    "DECODE_OPTIONS",
)
PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
# What a stranger can log: a screen clear, a window-title change, a bell, a NUL.
HOSTILE_QUESTION = "hi\x1b[2J\x07\x00there"
HOSTILE_REPLY = "ok\x1b]0;pwned\x07"


def _make_db(path: Path, *exchanges: tuple[str, str]) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    init_schema(engine)
    with session_factory(engine).begin() as s:
        UserRepository(s).touch(1, username="u1")
        ChatRepository(s).touch(1, type="private")
        for n, (question, reply) in enumerate(exchanges, start=1):
            ExchangeRepository(s).add(
                user_id=1,
                chat_id=1,
                message_id=n,
                user_text=question,
                reply_text=reply,
                latency_ms=5.0,
                model_version="m",
                decode_options={},
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
    engine.dispose()
    return url


def _runs(url: str) -> list[tuple[str, str | None]]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return [(r.status, r.log) for r in s.query(TrainingRun).order_by(TrainingRun.id)]
    finally:
        engine.dispose()


@pytest.fixture
def ws(tmp_path, monkeypatch, tiny_checkpoint, tiny_data, tiny_tsv) -> dict[str, str]:
    """A workspace: the tiny model and data, a text file named like a checkpoint, a text file
    and an empty file named like databases, a review database with hostile text."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    (tmp_path / "passwd.pt").write_text(PASSWD)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_text(PASSWD)
    (tmp_path / "text.db").write_text(PASSWD)
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "empty.tsv").write_text("")
    review = _make_db(tmp_path / "review.db", (HOSTILE_QUESTION, HOSTILE_REPLY))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigterm = signal.getsignal(signal.SIGTERM)  # retrain installs its own
    yield {
        "tmp": str(tmp_path),
        "bad": str(tmp_path / "passwd.pt"),
        "ck": str(tiny_checkpoint),
        "data": str(tiny_data),
        "tsv": str(tiny_tsv),
        "review": review,
        "text_db": f"sqlite:///{tmp_path}/text.db",
        "new_db": f"sqlite:///{tmp_path}/new.db",
    }
    signal.signal(signal.SIGTERM, sigterm)
    root.handlers[:] = handlers  # the entry points configure logging; undo it
    root.setLevel(level)


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``xianliao ARGV`` in this process: (exit code, stdout, stderr)."""
    from xianliao.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _size(path: str) -> int | None:
    return Path(path).stat().st_size if Path(path).exists() else None


# ----- then: what must (not) have happened besides the message ---------------------------------


def _not_live(ws: dict[str, str]) -> None:
    assert not Path(ws["tmp"], "live.pt").exists()  # nothing was put live


def _no_database_made(ws: dict[str, str]) -> None:
    assert _size(f"{ws['tmp']}/none.db") is None and _size(f"{ws['tmp']}/empty.db") == 0
    assert _size(f"{ws['tmp']}/text.db") == len(PASSWD)


def _no_run_recorded(ws: dict[str, str]) -> None:
    assert _size(f"{ws['tmp']}/new.db") is None  # refused before the database was opened


def _run_failed(ws: dict[str, str]) -> None:
    assert [status for status, _ in _runs(ws["new_db"])] == ["failed"]


def _another_run(ws: dict[str, str]) -> None:
    """Before the command: a run in progress, in this (live) process."""
    engine = make_engine(ws["review"])
    with session_factory(engine).begin() as s:
        runs = TrainingRunRepository(s)
        run = runs.create(started_by=0, params={}, status="running")
        runs.acquire(run.id, owner="another-host:1:x", ttl=timedelta(minutes=5))
    engine.dispose()


def row(name: str, argv: list[str], says: str, env=None, before=None, then=None, **kw):  # noqa: ANN001
    """A table row: ``xianliao ARGV`` (in environment ``env``, after ``before(ws)``) fails with
    one line containing ``says``, and then ``then(ws)`` holds."""
    return pytest.param(argv, env or {}, says, before, then, id=name, **kw)


RETRAIN = ["retrain", "--base", "{data}", "--out", "{tmp}/retrain", "--promote", "never"]
NOT_READABLE = "{bad} is not a readable xianliao checkpoint"
NO_CUDA = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA"
)

ERROR_ROWS = [
    # destructive defaults: an existing run or data dir is not overwritten silently
    row(
        "overwrite-train",
        ["train", "{data}", "--out", "{tmp}/run", "--quiet"],
        "already holds last.pt: --resume to continue that run, --force to start again",
    ),
    row(
        "overwrite-prepare",
        ["prepare", "{tsv}", "--out", "{data}", "--quiet"],
        "already holds prepared data: choose another --out, or --force",
    ),
    # 1. a text file where a checkpoint belongs
    row("1-chat", ["chat", "{bad}", "--no-log"], NOT_READABLE),
    row("1-eval", ["eval", "{bad}", "{tsv}"], NOT_READABLE),
    row(
        "1-promote",
        ["promote", "{bad}", "--database-url", "{new_db}", "--model", "{tmp}/live.pt"],
        f"not promoted: {NOT_READABLE}",
        then=_not_live,
    ),
    row(
        "1-train-resume",
        ["train", "{data}", "--out", "{tmp}/run", "--resume", "--quiet"],
        "last.pt is not a readable xianliao checkpoint",
    ),
    row(
        "1-retrain",
        [*RETRAIN, "--model", "{bad}", "--database-url", "{new_db}"],
        f"the live model cannot be read: {NOT_READABLE}",
        then=_run_failed,
    ),
    row(
        "1-prepare-vocab-from",
        ["prepare", "{tsv}", "--out", "{tmp}/d", "--vocab-from", "{bad}"],
        f"--vocab-from {{bad}}: {NOT_READABLE}",
    ),
    # 3. DATABASE_URL names a file that is not a database
    *(
        row(
            f"3-{argv[0]}", argv, "file is not a database", {"DATABASE_URL": "{text_db}"}, then=then
        )
        for argv, then in (
            (["promote", "{ck}", "--model", "{tmp}/live.pt"], _not_live),
            (["rollback", "--model", "{tmp}/live.pt"], _no_database_made),
            ([*RETRAIN, "--model", "{ck}"], _no_database_made),
        )
    ),
    # 4. a blocklist that does not exist: the run is marked failed, not left running
    row(
        "4-retrain-blocklist",
        [*RETRAIN, "--model", "{ck}", "--database-url", "{new_db}", "--blocklist", "/nonexist"],
        "--blocklist /nonexist: No such file or directory",
        then=_run_failed,
    ),
    row(
        "4-retrain-reply-blocklist",
        [*RETRAIN, "--model", "{ck}", "--database-url", "{new_db}"],
        "setting REPLY_BLOCKLIST: No such file or directory",
        {"REPLY_BLOCKLIST": "/nonexist"},
        then=_run_failed,
    ),
    # processes that cannot share the batch: refused before the database is opened
    row(
        "retrain-nproc",
        [*RETRAIN, "--model", "{ck}", "--database-url", "{new_db}", "--nproc", "3"],
        "--batch-size 64 does not split evenly over 3 processes",
        then=_no_run_recorded,
    ),
    # 5. an id too big for the database
    row(
        "5-review-reject",
        ["review", "reject", "99999999999999999999999", "--database-url", "{review}"],
        "no exchange with id 99999999999999999999999",
    ),
    row(
        "5-review-edit",
        ["review", "edit", "99999999999999999999999", "x", "--database-url", "{review}"],
        "no exchange with id 99999999999999999999999",
    ),
    # 6. the device setting, not the checkpoint, is at fault
    row(
        "6-device-banana",
        ["chat", "{ck}", "--no-log"],
        "setting MODEL_DEVICE",
        {"MODEL_DEVICE": "banana"},
    ),
    row(
        "6-device-cuda",
        ["chat", "{ck}", "--no-log"],
        "setting MODEL_DEVICE: 'cuda'",
        {"MODEL_DEVICE": "cuda"},
        marks=NO_CUDA,
    ),
    row(
        "6-quantize-maybe",
        ["chat", "{ck}", "--no-log"],
        "setting MODEL_QUANTIZE: Input should be a valid boolean",
        {"MODEL_QUANTIZE": "maybe"},
    ),
    row(
        "6-train-device-banana",
        ["train", "{data}", "--out", "{tmp}/r", "--device", "banana"],
        "argument --device: 'banana' is not a torch device",
    ),
    row(
        "6-train-device-cuda",
        ["train", "{data}", "--out", "{tmp}/r", "--device", "cuda"],
        "argument --device: 'cuda'",
        marks=NO_CUDA,
    ),
    # 7. options that would do nothing or break a later step
    *(
        row(
            f"7-prepare{option}",
            ["prepare", "{tsv}", "--out", "{tmp}/d", option, value],
            f"argument {option}: '{value}' is not a whole number",
        )
        for option, value in (
            ("--max-vocab", "0"),
            ("--min-freq", "-1"),
            ("--valid-permille", "2000"),
            ("--max-len", "0"),
            ("--workers", "-1"),
        )
    ),
    *(
        row(
            f"7-{head[0]}{option}",
            [*head, option, "0"],
            f"argument {option}: '0' is not a whole number >= 1",
        )
        for head in (RETRAIN, ["train", "{data}", "--out", "{tmp}/r"])
        for option in ("--steps", "--batch-size")
    ),
    row(
        "7-eval--limit",
        ["eval", "{ck}", "{tsv}", "--limit", "0"],
        "argument --limit: '0' is not a whole number >= 1",
    ),
    row(
        "7-review--source",
        ["review", "list", "--source", "fax", "--database-url", "{review}"],
        "argument --source: invalid choice: 'fax'",
    ),
    row(
        "7-chat-trust-upside-down",
        ["chat", "{ck}", "--no-log"],
        "trust_from (0.9) must not exceed trust_full (0.5)",
        {"DECODE_OPTIONS": '{{"trust_from": 0.9, "trust_full": 0.5}}'},  # {{ is { (str.format)
    ),
    row(
        "7-prepare-nothing",
        ["prepare", "{tmp}/empty.tsv", "--out", "{tmp}/d", "--workers", "1", "--quiet"],
        "no pairs written",
    ),
    # 9. commands that only look (or undo) never create or fill a database (review already
    # refused a missing file: only its empty-file case was a bug)
    *(
        row(
            f"9-{'-'.join(argv[:2])}-{name}",
            argv,
            f"no database at {{tmp}}/{name}",
            {"DATABASE_URL": f"sqlite:///{{tmp}}/{name}"},
            then=_no_database_made,
        )
        for argv, name in (
            (["review", "list"], "empty.db"),
            (["review", "approve", "1"], "empty.db"),
            (["rollback"], "none.db"),
            (["rollback"], "empty.db"),
        )
    ),
    # 10. one run at a time, and how to cancel the other one from the command line
    row(
        "10-retrain-busy",
        [*RETRAIN, "--model", "{ck}", "--database-url", "{review}"],
        "or here with: xianliao retrain --cancel 1",
        before=_another_run,
    ),
]


@pytest.mark.parametrize(("argv", "env", "says", "before", "then"), ERROR_ROWS)
def test_bad_input_is_one_line(ws, capsys, monkeypatch, argv, env, says, before, then):
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**ws))
    if before:
        before(ws)
    rc, _, err = cli([arg.format(**ws) for arg in argv], capsys)
    line = one_line(err)
    assert rc != 0
    assert says.format(**ws) in line
    if then:
        then(ws)


# ----- 2. bytes that are not UTF-8: replaced, and the command goes on ---------------------------


def test_chat_answers_the_lines_after_invalid_utf8(ws, capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe\n\xe4\xbd\xa0\xe5\xa5\xbd\n"))
    )
    rc, out, err = cli(["chat", ws["ck"], "--no-log"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert len(out.splitlines()) == 2  # one reply per line, the bad one included


def test_review_edit_from_stdin_replaces_invalid_utf8(ws, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good \xff answer\n")))
    rc, out, err = cli(["review", "edit", "1", "-", "--database-url", ws["review"]], capsys)
    assert rc == 0 and "Traceback" not in err and "answer stored" in out
    rc, out, _ = cli(["review", "list", "--json", "--database-url", ws["review"]], capsys)
    assert json.loads(out)["edited_reply"] == "good \ufffd answer"


def test_review_list_argv_with_undecodable_bytes(ws, capsys):
    # what Python makes of `--text $'\xff'`: a surrogate escape
    rc, out, err = cli(
        ["review", "list", "--text", "\udcff", "--database-url", ws["review"]], capsys
    )
    assert rc == 0 and "Traceback" not in err and "no exchanges match" in out


# ----- 8. logged control characters are shown, not obeyed ---------------------------------------


@pytest.mark.parametrize("command", [["list"], ["show", "1"]])
def test_review_shows_control_characters_escaped(ws, capsys, command):
    rc, out, err = cli(["review", *command, "--database-url", ws["review"]], capsys)
    assert rc == 0, err
    assert not any(ch in out for ch in "\x1b\x07\x00")
    assert "hi\\x1b[2J\\x07\\x00there" in out and "ok\\x1b]0;pwned\\x07" in out
