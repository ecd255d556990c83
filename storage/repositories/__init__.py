"""Repositories: one per aggregate, each wrapping a session the caller owns.

The caller opens and commits the transaction (``with factory.begin() as session:``); these
classes only add, query and change rows. Bound parameters only, portable constructs only.
"""

from xianliao.storage.repositories.admin import AuditRepository, PromotionRepository
from xianliao.storage.repositories.exchanges import (
    ExchangeFilter,
    ExchangeRepository,
    FeedbackRepository,
    LatencyStats,
)
from xianliao.storage.repositories.inbox import InboxRepository, StoredUpdate
from xianliao.storage.repositories.runs import TrainingRunRepository, database_now
from xianliao.storage.repositories.users import (
    LAST_SEEN_RESOLUTION,
    ChatRepository,
    RateLimitRepository,
    UserRepository,
    flush_deleted,
)

__all__ = [
    "LAST_SEEN_RESOLUTION",
    "AuditRepository",
    "ChatRepository",
    "ExchangeFilter",
    "ExchangeRepository",
    "FeedbackRepository",
    "InboxRepository",
    "LatencyStats",
    "PromotionRepository",
    "RateLimitRepository",
    "StoredUpdate",
    "TrainingRunRepository",
    "UserRepository",
    "database_now",
    "flush_deleted",
]
