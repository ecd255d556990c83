"""The console's settings, read from the environment and ``.env`` by its entry point.

The admin token is never stored: ``CONSOLE_TOKEN_HASH`` holds a salted scrypt hash of it, made
with ``xianliao console hash-token`` (which reads the token from the terminal, never argv).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# scrypt cost: about 50 ms per check, cheap for one admin, slow for a guesser (login is also
# rate-limited).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (hex) of ``token``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        token.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _split_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown hash scheme {scheme!r}")
    return int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest)


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` matches the stored hash (compared in constant time)."""
    n, r, p, salt, digest = _split_hash(stored)
    got = hashlib.scrypt(
        token.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=len(digest)
    )
    return hmac.compare_digest(got, digest)


class ConsoleSettings(BaseSettings):
    """What the console is configured with (the bot's names where they mean the same)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = "sqlite:///data/xianliao.db"
    model_path: Path = Path("runs/best.pt")
    base_data_dir: Path = Path("data/quickstart")  # prepared base corpus mixed into retraining
    retrain_args: str = ""  # extra 'xianliao retrain' options, as for /retrain
    retrain_lease_s: float = Field(default=60.0, ge=1)  # RETRAIN_LEASE_S, as for the bot
    admin_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()

    # The hash of the admin token (xianliao console hash-token); unset: nobody can log in.
    console_token_hash: str | None = None
    # The admin id the audit records for console actions; unset: the lowest ADMIN_USER_IDS.
    console_admin_id: int | None = None
    # Signs session cookies and login links; unset: a random key per process (sessions end
    # when the console restarts, and the bot cannot make login links).
    console_secret_key: SecretStr | None = None
    console_session_s: int = Field(default=8 * 3600, ge=60)  # a session ends after this
    console_idle_s: int = Field(default=30 * 60, ge=60)  # ... or this long without a request
    # Cookies only over HTTPS (behind a TLS proxy); turn off only for http://127.0.0.1.
    console_secure_cookies: bool = True
    console_login_attempts: int = Field(default=5, ge=1)  # failed logins per address ...
    console_login_window_s: float = Field(default=300.0, gt=0)  # ... per this many seconds

    @field_validator("admin_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return frozenset(int(p) for p in value.replace(";", ",").split(",") if p.strip())
            except ValueError:
                raise ValueError(
                    "ADMIN_USER_IDS must be numeric Telegram user ids separated by commas"
                ) from None
        return frozenset({value}) if isinstance(value, int) else value

    @field_validator("console_token_hash", "console_secret_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("console_token_hash")
    @classmethod
    def _check_hash(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _split_hash(value.strip())
            except ValueError:
                raise ValueError(
                    "CONSOLE_TOKEN_HASH must be the line 'xianliao console hash-token' prints"
                ) from None
            return value.strip()
        return value

    @model_validator(mode="after")
    def _admin_for_the_audit(self) -> ConsoleSettings:
        if self.console_token_hash and self.admin_id() is None:
            raise ValueError("set CONSOLE_ADMIN_ID or ADMIN_USER_IDS: the audit needs an admin id")
        return self

    def admin_id(self) -> int | None:
        """The admin the console acts as."""
        if self.console_admin_id is not None:
            return self.console_admin_id
        return min(self.admin_user_ids) if self.admin_user_ids else None

    def secret_key(self) -> str:
        if self.console_secret_key is not None:
            return self.console_secret_key.get_secret_value()
        return secrets.token_urlsafe(32)
