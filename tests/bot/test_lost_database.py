"""A start that finds its SQLite file gone says so, instead of silently logging to a new one."""

from __future__ import annotations

import logging
import shutil

from xianliao.bot.config import Settings
from xianliao.bot.runtime import create_service


def _start(tmp_path, model, caplog) -> list[str]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/data/chat.db",
        model_path=model,
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xianliao.bot.runtime"):
        create_service(settings).close()
    return [r.getMessage() for r in caplog.records if "deleted or moved" in r.getMessage()]


def test_a_deleted_database_folder_is_named_at_the_next_start(tmp_path, tiny_checkpoint, caplog):
    model = tmp_path / "runs" / "best.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoint, model)

    assert _start(tmp_path, model, caplog) == []  # the first start creates it: nothing lost
    assert _start(tmp_path, model, caplog) == []  # found again
    shutil.rmtree(tmp_path / "data")
    warned = _start(tmp_path, model, caplog)
    assert len(warned) == 1 and "chat.db" in warned[0]
    assert _start(tmp_path, model, caplog) == []  # said once: the new file is the one now
