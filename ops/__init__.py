"""What admins do, free of Telegram: review, training runs, promotion and rollback.

Every front end (the Telegram admin commands, ``xianliao review/retrain/promote/rollback``,
the web console) parses its input, calls these functions and formats the result.
"""
