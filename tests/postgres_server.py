"""A throwaway PostgreSQL server for the test run, or the one XIANLIAO_TEST_POSTGRES_URL names.

The server lives in a temporary folder, listens on 127.0.0.1 on a free port with trust
authentication (nothing else can reach it), runs without fsync (its data is thrown away) and is
stopped at the end of the run. ``initdb`` refuses to run as root, so as root the server runs as
the ``postgres`` user (or ``nobody``). Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

URL_ENV = "XIANLIAO_TEST_POSTGRES_URL"
REQUIRE_ENV = "XIANLIAO_REQUIRE_POSTGRES"
_SUPERUSER = "xianliao"


class Unavailable(Exception):
    """No PostgreSQL server can be had here; the message says why."""


def find_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    # The newest installed major version.
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise Unavailable("running as root and there is no postgres or nobody user to run initdb as")


# Waits for the test process ($0) to end, then stops the server and removes its folder.
_WATCHDOG = (
    'while [ -d "/proc/$0" ]; do sleep 1; done; '
    '"$1" -D "$2" -m immediate -w stop >/dev/null 2>&1; rm -rf "$3"'
)


def _watchdog(bin_dir: Path, data: Path, root: Path, kw: dict) -> subprocess.Popen:
    """A test run killed with SIGKILL never reaches its clean-up: without this its server
    would run on (and hold its port and folder) until the machine restarts. A session of its
    own, so that Ctrl+C to the tests does not stop it before the clean-up has run."""
    return subprocess.Popen(
        ["sh", "-c", _WATCHDOG, str(os.getpid()), str(bin_dir / "pg_ctl"), str(data), str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **kw,
    )


class PostgresServer:
    """A server the tests may create databases on: started here, or given by URL."""

    def __init__(self, admin_url: URL, *, stop: Callable[[], None] | None = None) -> None:
        self.admin_url = admin_url
        self._stop = stop
        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._names = itertools.count(1)
        self._prefix = "xl_" + uuid.uuid4().hex[:8]

    @classmethod
    def start(cls) -> PostgresServer:
        """Start a fresh server in a temporary folder, or raise ``Unavailable``."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise Unavailable("PostgreSQL's initdb was not found (apt-get install postgresql)")
        user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="xianliao-pg-"))
        data, log = root / "data", root / "server.log"
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        kw = {"user": user.pw_uid, "group": user.pw_gid} if user else {}

        def run(*args: str) -> None:
            done = subprocess.run(
                [str(bin_dir / args[0]), *args[1:]],
                capture_output=True,
                text=True,
                cwd=root,
                timeout=120,
                **kw,
            )
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise Unavailable(f"{args[0]} failed: {' / '.join(tail)}")

        try:
            run("initdb", "-D", str(data), "-U", _SUPERUSER, "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync")  # fmt: skip
            for attempt in range(3):  # the free port may be taken before the server binds it
                port = _free_port()
                options = (
                    f"-p {port} -c listen_addresses=127.0.0.1 -k {root} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=200"
                )
                try:
                    run("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t",
                        "60", "start")  # fmt: skip
                    break
                except Unavailable:
                    if attempt == 2:
                        raise
        except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable(str(exc)) from exc

        watchdog = _watchdog(bin_dir, data, root, kw)

        def stop() -> None:
            watchdog.kill()
            try:
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            finally:
                shutil.rmtree(root, ignore_errors=True)

        url = URL.create(
            "postgresql+psycopg", username=_SUPERUSER, host="127.0.0.1", port=port,
            database="postgres",
        )  # fmt: skip
        return cls(url, stop=stop)

    @classmethod
    def from_env(cls) -> PostgresServer | None:
        """The server XIANLIAO_TEST_POSTGRES_URL names (a role that may CREATE DATABASE)."""
        value = os.environ.get(URL_ENV)
        if not value:
            return None
        url = make_url(value)
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        return cls(url)

    def check(self) -> None:
        """Raise ``Unavailable`` unless the server answers."""
        try:
            with self._admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "no server", said once
            raise Unavailable(f"cannot connect to PostgreSQL: {exc}".splitlines()[0]) from exc

    def create_database(self) -> str:
        """A new, empty database; returns its URL as a user would write it (postgresql://)."""
        name = f"{self._prefix}_{next(self._names)}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a name made here, not input
        return self.admin_url.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._admin.dispose()
        if self._stop is not None:
            self._stop()
