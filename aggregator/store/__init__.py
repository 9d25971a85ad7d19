"""Durable storage: the Store contract (base.py), the SQLite and PostgreSQL backends, the writes."""
