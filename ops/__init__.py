"""What admins do, free of Telegram: review, training runs, promotion and rollback.

Every front end (the Telegram admin commands, ``xianliao review/retrain/promote/rollback``,
the web console) parses its input, calls these functions and formats the result.

- :mod:`ops.review`: ``Review(db, on_change=..., via=...)``: ``search``, ``pending``, ``count``,
  ``get``, ``get_many``, ``stats``, ``set_status``/``approve``/``reject``/``to_pending`` (by
  ``ids=`` or ``matching=`` an ``ExchangeFilter``), ``edit``, ``export`` and ``records``.
- :mod:`ops.runs`: training-run records (``recent_runs``, ``get_run``), one run at a time
  across hosts through a database lease (``create_run``, ``begin_run``, ``live_run``,
  ``Lease``), dead-run detection and cancelling any run (``request_cancel``).
- :mod:`ops.supervisor`: ``RunSupervisor``: start, progress, cancel a retraining process.
- :mod:`ops.models`: ``promote``, ``rollback``, ``history``.

Each takes the process's ``storage.database.Database``; the functions are synchronous except
the supervisor's (an asyncio front end runs the others in a thread).
"""
