"""Durable storage: the Store contract, SQLite with its writer process, PostgreSQL, store copy."""
