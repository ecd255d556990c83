"""``xianliao console``: serve the admin web console; ``xianliao console hash-token``: make the
CONSOLE_TOKEN_HASH line for an admin token; ``xianliao console link``: print a one-time login
link."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

PROG = "xianliao console"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument(
        "action",
        nargs="?",
        choices=["serve", "hash-token", "link"],
        default="serve",
        help="serve (default), hash-token (reads the token from the terminal or stdin), "
        "or link (prints a login link valid for 5 minutes)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--env-file", default=".env", help="settings file (default .env)")
    p.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the console's public address, for 'link'"
    )
    return p


def _read_settings(env_file: str):  # noqa: ANN202 - ConsoleSettings
    from pydantic import ValidationError

    from xianliao.console.config import ConsoleSettings

    try:
        return ConsoleSettings(_env_file=env_file)
    except ValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            print(f"{PROG}: setting {name}: {err['msg']}", file=sys.stderr)
        return None


def _hash_token() -> int:
    from xianliao.console.config import hash_token

    if sys.stdin.isatty():
        token = getpass.getpass("admin token: ")
        if token != getpass.getpass("again: "):
            print(f"{PROG}: the two tokens differ", file=sys.stderr)
            return 2
    else:
        token = sys.stdin.readline().rstrip("\n")
    if len(token) < 16:
        print(f"{PROG}: use a token of at least 16 characters", file=sys.stderr)
        return 2
    print(f"CONSOLE_TOKEN_HASH={hash_token(token)}")
    return 0


def _link(settings, url: str) -> int:  # noqa: ANN001
    from xianliao.console.auth import make_login_token

    admin = settings.admin_id()
    if settings.console_secret_key is None or admin is None:
        print(
            f"{PROG}: set CONSOLE_SECRET_KEY and CONSOLE_ADMIN_ID (or ADMIN_USER_IDS) for links",
            file=sys.stderr,
        )
        return 2
    token = make_login_token(settings.secret_key(), admin)
    print(f"{url.rstrip('/')}/login/link?t={token}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "hash-token":
        return _hash_token()
    settings = _read_settings(args.env_file)
    if settings is None:
        return 2
    if args.action == "link":
        return _link(settings, args.url)
    try:
        import uvicorn

        from xianliao.console.app import create_app
    except ModuleNotFoundError as exc:
        print(f"{PROG}: {exc.name} is missing: pip install 'xianliao[console]'", file=sys.stderr)
        return 2
    from xianliao.storage.database import Database, DatabaseUnavailable

    try:
        db = Database.open(settings.database_url, create=False)
    except DatabaseUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if not settings.console_token_hash:
        print(f"{PROG}: CONSOLE_TOKEN_HASH is not set: nobody can log in (see docs/console.md)")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.console_secure_cookies:
        print(f"{PROG}: warning: listening on {args.host} with CONSOLE_SECURE_COOKIES off")
    elif settings.console_secure_cookies:
        print(
            f"{PROG}: the session cookie is sent over HTTPS only: open the console through your "
            "TLS proxy, or set CONSOLE_SECURE_COOKIES=false for plain http://127.0.0.1"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        # access_log off: a login link's token is in its URL, and must never reach a log
        # runs it starts read the same settings file as the console, wherever they start
        app = create_app(settings, db, env_file=str(Path(args.env_file).resolve()))
        uvicorn.run(app, host=args.host, port=args.port, access_log=False)
    finally:
        db.dispose()
    return 0
