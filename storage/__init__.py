"""Storage: SQLAlchemy models, engine/session factory and repositories (stdlib + SQLAlchemy only)."""
