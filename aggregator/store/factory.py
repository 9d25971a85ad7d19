"""The store backend `[store] backend` names, built from the configuration."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from aggregator.config import Config
from aggregator.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from aggregator.store.postgres import PostgresStore

AnyStore = "SqliteStore | PostgresStore"

def build_store(config: Config, *, on_commit: Callable[[float], None] | None = None,
                on_lost: Callable[[str], None] | None = None,
                on_accepted: Callable[[], None] | None = None,
                on_outbox: Callable[[str | None], None] | None = None,
                on_members: Callable[[tuple[str, ...]], None] | None = None,
                held: Callable[[], Collection[str]] | None = None,
                on_recorded: Callable[[str, list[str]], None] | None = None,
                ) -> SqliteStore | PostgresStore:
    """SQLite (the embedded default) or PostgreSQL (several instances share it). `on_lost`:
    the SQLite writer process ended; `on_accepted`: messages were stored that wait to be sent
    (by an ingress worker, another instance, or back from an expired lease); `on_outbox`:
    another instance added a callback (None) or an SMPP receipt for an account (PostgreSQL);
    `on_members`: the live instances' names, sorted, at open and on every change (PostgreSQL;
    SQLite is one instance); `held`: the ids of the claimed messages the dispatcher has in hand
    (PostgreSQL renews only their leases); `on_recorded`: (provider, message ids) whose submit
    records committed (PostgreSQL: their window slots are freed at once)."""
    store = config.store
    if store.backend == "postgres":
        from aggregator.store.postgres import PostgresStore  # asyncpg only when used

        built = PostgresStore(store.dsn, instance=config.instance.name,
                              pool_size=store.pool_size, lease_seconds=store.lease_seconds,
                              on_accepted=on_accepted, on_outbox=on_outbox)
        built.on_members = on_members
        built.held = held
        built.on_recorded = on_recorded
        return built
    return SqliteStore(store.path, commit_batch=store.commit_batch,
                       commit_gather=store.commit_gather_ms / 1000, on_commit=on_commit,
                       on_lost=on_lost, on_accepted=on_accepted)


def worker_store(config: Config, writer_address: str | None, node: int, *,
                 on_lost: Callable[[str], None] | None = None) -> SqliteStore | PostgresStore:
    """An ingress worker's own store, not yet open: it writes without the daemon on the way.
    SQLite: the daemon's writer process (`writer_address`) for writes, its own WAL connections
    for reads. PostgreSQL: a pool of its own (`pool_size`, per process) and no background
    tasks: the daemon claims, renews and recovers. `on_lost`: the writer process ended
    (SQLite; it ends with the daemon)."""
    store = config.store
    if store.backend == "postgres":
        from aggregator.store.postgres import PostgresStore

        built = PostgresStore(store.dsn, instance=f"{config.instance.name}/worker-{node}",
                              pool_size=store.pool_size, lease_seconds=store.lease_seconds)
        built.worker = True
        return built
    if writer_address is None:
        raise ValueError("an ingress worker on SQLite needs the writer process's address")
    return SqliteStore(store.path, commit_batch=store.commit_batch, join=writer_address,
                       on_lost=on_lost)
