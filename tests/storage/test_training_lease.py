"""One retraining run at a time across hosts: the database lease on training runs, on SQLite
and PostgreSQL, with rival processes acquiring at the same moment."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from xianliao.storage.db import init_schema, make_engine, session_factory
from xianliao.storage.models import TrainingRun
from xianliao.storage.repositories import TrainingRunRepository

TTL = timedelta(seconds=60)


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    init_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def _new_run(factory, **params) -> int:
    with factory.begin() as s:
        return TrainingRunRepository(s).create(started_by=1, params=params).id


def _age(factory, run_id: int, seconds: float) -> None:
    """Make a run's heartbeat ``seconds`` old, as if its process had stopped renewing it."""
    with factory.begin() as s:
        run = s.get(TrainingRun, run_id)
        s.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(heartbeat_at=run.heartbeat_at - timedelta(seconds=seconds))
        )


def test_one_run_holds_the_lease_until_it_finishes(factory):
    a, b = _new_run(factory), _new_run(factory)
    with factory() as s:
        assert TrainingRunRepository(s).holder(ttl=TTL) is None  # queued runs hold nothing
    with factory.begin() as s:
        assert TrainingRunRepository(s).acquire(a, owner="host1:10", ttl=TTL) is None
    with factory.begin() as s:
        runs = TrainingRunRepository(s)
        assert runs.holder(ttl=TTL) == a
        assert runs.acquire(b, owner="host2:10", ttl=TTL) == a  # the same pid on another host
        assert runs.heartbeat(a, owner="host1:10")
        assert not runs.heartbeat(a, owner="host2:10")
        runs.finish(a, status="succeeded")
        assert not runs.heartbeat(a, owner="host1:10")  # finished: the lease is gone
    with factory.begin() as s:
        runs = TrainingRunRepository(s)
        assert runs.holder(ttl=TTL) is None
        assert runs.acquire(b, owner="host2:10", ttl=TTL) is None
        assert runs.holder(ttl=TTL) == b
    with factory.begin() as s, pytest.raises(ValueError, match="has finished"):
        TrainingRunRepository(s).acquire(a, owner="host1:10", ttl=TTL)


def test_a_run_whose_heartbeat_stopped_is_stale_and_failed_not_blocking(factory):
    dead, waiting = _new_run(factory), _new_run(factory)
    _age(factory, waiting, 3600)  # queued an hour ago; its process never started
    with factory.begin() as s:
        assert TrainingRunRepository(s).acquire(dead, owner="gone:1", ttl=TTL) is None
    _age(factory, dead, 120)  # then this one's process stopped renewing its lease
    with factory() as s:
        runs = TrainingRunRepository(s)
        assert runs.get(waiting).status == "failed"  # found stale by the acquire above
        assert [r.id for r in runs.stale(ttl=TTL)] == [dead]
        assert runs.stale(ttl=timedelta(hours=2)) == []
        assert runs.holder(ttl=TTL) is None
    fresh = _new_run(factory)
    with factory.begin() as s:
        assert TrainingRunRepository(s).acquire(fresh, owner="host2:7", ttl=TTL) is None
    with factory() as s:
        runs = TrainingRunRepository(s)
        assert [r.id for r in runs.active()] == [fresh]
        gone = runs.get(dead)
        assert gone.status == "failed" and "no heartbeat for" in gone.log
        assert not runs.heartbeat(dead, owner="gone:1")  # a process that comes back must stop


def test_a_run_from_before_heartbeats_counts_from_its_start(factory):
    old = _new_run(factory)
    with factory.begin() as s:
        run = s.get(TrainingRun, old)
        s.execute(
            update(TrainingRun)
            .where(TrainingRun.id == old)
            .values(heartbeat_at=None, started_at=run.started_at - timedelta(days=1))
        )
    with factory.begin() as s:
        assert TrainingRunRepository(s).fail_stale(ttl=TTL) == [old]
        assert TrainingRunRepository(s).active() == []


@pytest.mark.parametrize("round_", range(3))
def test_rivals_acquiring_at_the_same_moment_get_one_lease(database_url, round_):
    """Six processes (threads with their own engines) each queue a run and acquire the lease
    for it at once, in one transaction: exactly one wins, and the others are told its id."""
    engines = [make_engine(database_url) for _ in range(6)]
    init_schema(engines[0])
    factories = [session_factory(e) for e in engines]
    barrier = threading.Barrier(len(factories))
    # On SQLite the first transaction holds the write lock until it commits: no one else can
    # queue a run meanwhile, so there the rivals meet only at the start.
    postgres = engines[0].dialect.name == "postgresql"
    queued = threading.Barrier(len(factories))
    won, told, errors = [], [], []

    def rival(i: int) -> None:
        try:
            barrier.wait()
            with factories[i].begin() as s:
                runs = TrainingRunRepository(s)
                run = runs.create(started_by=i, params={})
                if postgres:  # every run row exists, none committed, before anyone acquires
                    queued.wait()
                holder = runs.acquire(run.id, owner=f"h{i}:1", ttl=TTL)
            (won if holder is None else told).append(run.id if holder is None else holder)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rival, args=(i,)) for i in range(len(factories))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for engine in engines:
        engine.dispose()
    assert errors == [] and len(won) == 1
    assert told == [won[0]] * (len(factories) - 1)
