"""The bot's settings: one object read from the environment and ``.env`` by the entry points.

The names are part of the user interface (see ``.env.example``); keep them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///data/xianliao.db"
DEFAULT_MODEL_PATH = Path("runs/best.pt")
# The torch devices a model can be served on, checked here (without importing torch) so that a
# typo is reported as a setting, not later as a checkpoint that "cannot be loaded".
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


class Settings(BaseSettings):
    """Everything the bot and the terminal chat can be configured with."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- Telegram ---
    telegram_bot_token: SecretStr | None = None
    telegram_base_url: str = "https://api.telegram.org/bot"  # the token is appended
    admin_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()

    # --- storage and model ---
    database_url: str = DEFAULT_DATABASE_URL
    model_path: Path = DEFAULT_MODEL_PATH
    model_device: str = "cpu"
    # dynamic int8 for the model's Linear and GRU layers; unset: int8 on CPU, fp32 on a GPU
    # (model.chatbot.served_int8). false: fp32 everywhere the model is served or judged.
    model_quantize: bool | None = None
    # torch intra-op threads per model process (unset: 1). Decoding one reply is a chain of
    # small ops that a second thread slows down (bench/RESULTS.md); use more workers instead.
    torch_threads: int | None = None
    # messages answered in one model call (8: the best p95 latency at 100 replies/s, bench)
    model_max_batch: int = Field(default=8, ge=1)
    # Processes that run the model beside the bot (so decoding and Telegram traffic use
    # different cores); 0 runs it in the bot's own process. The terminal chat always uses 0.
    model_workers: int = Field(default=1, ge=0, le=64)
    decode_options: Annotated[dict[str, Any], NoDecode] = {}  # JSON object, e.g. {"beam_size": 4}
    # The reply index served with the model (answers from the corpus, judged by the model):
    # unset = replies.sqlite beside MODEL_PATH when it exists; "none" = generation only.
    reply_index: str | None = None
    # More words the bot never sends (a file, one per line), beside the shipped blocklist.
    reply_blocklist: Path | None = None
    # Check MODEL_PATH every N seconds and swap in a new file (a promotion made with the CLI,
    # a copied checkpoint) without a restart; 0 turns it off (/reload still works).
    model_watch_s: float = Field(default=10.0, ge=0)

    # --- retraining (/retrain, xianliao retrain) ---
    base_data_dir: Path = Path("data/quickstart")  # prepared base corpus mixed into retraining
    retrain_args: str = ""  # extra 'xianliao retrain' options for /retrain, e.g. "--steps 500"
    # A run whose process has not renewed its lease for this long counts as dead (the same
    # value on every host that shares the database; the process renews every quarter of it).
    retrain_lease_s: float = Field(default=60.0, ge=1)

    # --- limits ---
    rate_limit_messages: int = Field(default=20, ge=0)  # per user per window; 0 disables
    rate_limit_window_s: float = Field(default=60.0, gt=0)
    max_input_chars: int = Field(default=1000, ge=1)
    typing_delay_s: float = Field(default=1.0, ge=0)  # show "typing..." if a reply takes longer
    concurrent_updates: int = Field(default=64, ge=1)
    # HTTP connections to the Bot API; requests beyond them wait up to POOL_TIMEOUT_S.
    connection_pool_size: int = Field(default=16, ge=1)
    pool_timeout_s: float = Field(default=30.0, gt=0)

    # --- outgoing flood limits (PTB's AIORateLimiter; 0 disables a limit) ---
    send_max_rate: float = Field(default=30.0, ge=0)  # requests per second, whole bot
    send_group_max_rate: float = Field(default=20.0, ge=0)  # requests per minute per group
    send_max_retries: int = Field(default=3, ge=0)  # retries after 429 retry_after
    # a reply whose sending fails (Telegram down, timeouts) is retried this long, with backoff
    send_retry_s: float = Field(default=30.0, ge=0)
    # --- what survives a crash (docs/operations.md) ---
    # Received messages are stored until answered; after a restart the ones older than this
    # are given up instead of answered late.
    pending_max_age_s: float = Field(default=3600.0, gt=0)
    # A stored message whose reply could not be sent is tried again this often while running.
    pending_retry_s: float = Field(default=60.0, gt=0)

    # --- webhook mode (used when WEBHOOK_URL is set) ---
    webhook_url: str | None = None  # public https URL Telegram posts to
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    webhook_secret: SecretStr | None = None
    # Webhook mode without a secret accepts forged updates "from" anyone: refused unless this.
    webhook_unsafe_no_secret: bool = False

    # --- the web console's login links (/console in Telegram) ---
    console_public_url: str | None = None  # the console's address as the admin's browser sees it
    console_secret_key: SecretStr | None = None  # the same key as the console's

    # --- the web console inside the bot's process (one process to run instead of two) ---
    console_in_bot: bool = False  # serve the console (xianliao[console]) on CONSOLE_PORT
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8080, ge=1, le=65535)

    # --- health and metrics (/healthz, /metrics for Prometheus; docs/console.md) ---
    health_port: int = Field(default=0, ge=0, le=65535)  # 0: not served
    health_host: str = "127.0.0.1"

    log_level: str = "INFO"

    @field_validator("admin_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace(";", ",").split(",")]
            try:
                return frozenset(int(p) for p in parts if p)
            except ValueError:
                raise ValueError(
                    "ADMIN_USER_IDS must be numeric Telegram user ids separated by commas"
                ) from None
        if isinstance(value, int):
            return frozenset({value})
        return value

    @field_validator("decode_options", mode="before")
    @classmethod
    def _parse_decode_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"DECODE_OPTIONS must be a JSON object: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError('DECODE_OPTIONS must be a JSON object, e.g. {"beam_size": 4}')
            return parsed
        return value

    @field_validator("model_device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if not _DEVICE.fullmatch(value):
                raise ValueError(f"{value!r} is not a torch device: use cpu, cuda, cuda:N or mps")
        return value

    @field_validator(
        "telegram_bot_token",
        "webhook_secret",
        "webhook_url",
        "torch_threads",
        "model_quantize",
        "reply_index",
        "reply_blocklist",
        "console_public_url",
        "console_secret_key",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def token(self) -> str | None:
        """The bot token, or None when not set."""
        return self.telegram_bot_token.get_secret_value() if self.telegram_bot_token else None


def read_settings(env_file: str | None, prog: str) -> Settings | None:
    """Settings from the environment and ``env_file``; on invalid values, print one line per
    bad setting (``prog: setting NAME: why``) to stderr and return None. For entry points."""
    import sys

    from pydantic import ValidationError

    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper()
            print(f"{prog}: setting {name}: {err['msg']}", file=sys.stderr)
        return None
