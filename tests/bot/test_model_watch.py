"""Promotions reach every replica (bot/model_watch.py): two services sharing one database and
one MODEL_PATH each reload when a promotion is recorded, even where the file's mtime and size
look unchanged (a stale NFS attribute cache), and once only; a hand-copied file is noticed by
its signature; a bad file leaves the old model serving."""

from __future__ import annotations

import asyncio
import os

import pytest
from bot_helpers import EchoModel

from xianliao.bot.model_watch import ModelWatch
from xianliao.bot.service import DialogueService
from xianliao.storage.database import Database
from xianliao.storage.repositories import PromotionRepository


def load(path) -> EchoModel:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("v"):
        raise ValueError("not a checkpoint")
    return EchoModel(version=text)


@pytest.fixture
def db(database_url):
    database = Database.open(database_url)
    yield database
    database.dispose()


def test_a_promotion_reaches_every_replica_once(db, tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("v1", encoding="utf-8")
    replicas = [
        DialogueService(load(path), sessions=None, model_path=path, load_model=load)
        for _ in range(2)
    ]
    watches = [ModelWatch(s, path, db) for s in replicas]

    async def check_all() -> list[str | None]:
        return [await w.check() for w in watches]

    try:
        assert asyncio.run(check_all()) == [None, None]
        stat = path.stat()
        path.write_text("v2", encoding="utf-8")  # same size; mtime put back below
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert asyncio.run(check_all()) == [None, None]  # the file alone looks unchanged
        with db.begin() as s:
            PromotionRepository(s).add(
                checkpoint=str(path), previous_checkpoint=None, promoted_by=1
            )
        assert asyncio.run(check_all()) == ["v2", "v2"]
        assert asyncio.run(check_all()) == [None, None]  # once
        assert [s.model_version for s in replicas] == ["v2", "v2"]

        path.write_text("v3 copied by hand", encoding="utf-8")
        assert asyncio.run(check_all()) == ["v3 copied by hand"] * 2
        path.write_text("garbage", encoding="utf-8")
        assert asyncio.run(check_all()) == [None, None]
        assert [s.model_version for s in replicas] == ["v3 copied by hand"] * 2
    finally:
        for s in replicas:
            s.close()
