"""The admin web console: server-rendered pages that call the ops package."""
