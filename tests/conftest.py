"""Shared fixtures: a tiny corpus, its prepared data and a tiny trained checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

# A few pairs a tiny model learns by heart in a few hundred steps.
TINY_PAIRS = [
    ("你好", "你好,很高兴认识你"),
    ("你叫什么名字", "我叫闲聊"),
    ("今天天气怎么样", "今天天气很好"),
    ("我好累", "早点休息吧"),
    ("你喜欢什么", "我喜欢聊天"),
    ("再见", "下次再聊"),
    ("你会做饭吗", "我只会煮面"),
    ("晚安", "祝你做个好梦"),
]


def pytest_configure(config):
    """Tiny models run fastest on one thread, and CI machines are small: one torch thread here
    and in every subprocess the tests start."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PTB_TIMEDELTA", "1")  # as the xianliao entry point sets it
    import torch

    torch.set_num_threads(1)


def write_tsv(path: Path, pairs) -> Path:
    path.write_text("".join(f"{q}\t{a}\n" for q, a in pairs), encoding="utf-8")
    return path


def shared_corpus(name: str) -> Path:
    """A file of ../shared/corpus, or skip: a user's fresh clone has no ../shared."""
    path = SHARED_CORPUS / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared corpora exist only in the project workspace")
    return path


@pytest.fixture(scope="session")
def tiny_tsv(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("corpus") / "tiny.tsv", TINY_PAIRS)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_tsv) -> Path:
    from xianliao.training.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("data")
    prepare(
        [str(tiny_tsv)], out, PrepareConfig(min_freq=1, workers=1, valid_permille=0), progress=False
    )
    return out


TINY_MODEL = {"emb_size": 48, "hidden_size": 64, "dropout": 0.0}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """A tiny model trained until it answers the TINY_PAIRS by heart."""
    from xianliao.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        steps=300, batch_size=8, lr=1e-2, eval_every=100, log_every=50, model=TINY_MODEL, seed=7
    )
    train([(str(tiny_data), 1.0)], out, cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """Path to a real, tiny, trained checkpoint (best.pt)."""
    return tiny_run / "best.pt"


# ----- databases: SQLite and PostgreSQL -------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole run: XIANLIAO_TEST_POSTGRES_URL's, else a throwaway
    one started here. Where none can be had the PostgreSQL variants skip, saying why, unless
    XIANLIAO_REQUIRE_POSTGRES=1 (CI), where that is an error."""
    from postgres_server import REQUIRE_ENV, PostgresServer, Unavailable

    try:
        server = PostgresServer.from_env() or PostgresServer.start()
        server.check()
    except Unavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV}=1) but: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database for one test, once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chat.db"
    return request.getfixturevalue("postgres_url")
