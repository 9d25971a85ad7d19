"""The store's writes: one plain function per operation, run on the writer's connection, and
the group runner that commits many of them in one transaction.

An operation is named and its parameters and result are typed: the writer process
(`writer_process.py`), where the daemon's event loop cannot hold it up, runs it for a
wire.Call whose arguments are decoded by that signature."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any
from urllib.parse import urlsplit

from aggregator.model import FINAL_STATUSES, FinalNotice, MessageStatus, ReceiptUpdate
from aggregator.store.base import NO_PROVIDER, ReceiptResult, StoreError
from aggregator.timefmt import iso_utc

IDEMPOTENCY_TTL = 24 * 3600.0
# Seconds a write waits for a lock another process holds before it fails (HTTP answers 503):
# short, so a request never hangs long on a locked database.
BUSY_TIMEOUT = 2.0

MESSAGE_COLUMNS = (
    "id, account, dest, region, sender, sender_kind, body, encoding, segments, concat_ref, "
    "message_class, receipt_mode, status, callback_url, reference, provider, error, created_at, "
    "submitted_at, done_at, attempts, next_attempt_at, expires_at"
)
PENDING = (MessageStatus.ACCEPTED.value, MessageStatus.SCHEDULED.value,
           MessageStatus.QUEUED.value)
FINAL_VALUES = frozenset(status.value for status in FINAL_STATUSES)

INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LOG_MARKETING = "INSERT INTO marketing_log (account, number, sent_at) VALUES (?, ?, ?)"
# Positions in a message row (MESSAGE_COLUMNS order) the writes read.
_ID, _ACCOUNT, _DEST, _SEGMENTS, _CLASS, _STATUS, _CREATED, _NEXT = 0, 1, 2, 8, 10, 12, 17, 21
# Messages in these states wait to be sent: the daemon's pending count.
WAITING = (MessageStatus.ACCEPTED, MessageStatus.SCHEDULED)
_WAITING_VALUES = frozenset(status.value for status in WAITING)

Parts = Sequence[tuple[int, str]]  # (seq, provider_msg_id) of the segments a provider took


def connect(path: str, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def callback_payload(notice: FinalNotice) -> str:
    return json.dumps(
        {
            "id": notice.message_id,
            "status": notice.status.value,
            "reference": notice.reference,
            "error": notice.error,
            "done_at": iso_utc(notice.done_at),
        },
        separators=(",", ":"),
    )


# ---- operations: (connection, plain values) -> plain result ----------------------------------

def accept_many(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]],
                marketing: Sequence[tuple[str, str, float]]) -> None:
    conn.executemany(INSERT_MESSAGE, rows)
    conn.executemany(_LOG_MARKETING, marketing)


def accept(conn: sqlite3.Connection, row: tuple[Any, ...],
           idempotency_key: str | None) -> tuple[Any, ...] | None:
    """Insert a message; with a key seen within IDEMPOTENCY_TTL, insert nothing and return
    the earlier message's row instead."""
    account, created_at = row[_ACCOUNT], row[_CREATED]
    if idempotency_key is not None:
        known = conn.execute(
            "SELECT message_id, created_at FROM idempotency WHERE account = ? AND key = ?",
            (account, idempotency_key),
        ).fetchone()
        if known is not None and known[1] > created_at - IDEMPOTENCY_TTL:
            prior: tuple[Any, ...] | None = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (known[0],)
            ).fetchone()
            if prior is not None:
                return prior
        conn.execute(
            "INSERT OR REPLACE INTO idempotency (account, key, message_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            (account, idempotency_key, row[_ID], created_at),
        )
    conn.execute(INSERT_MESSAGE, row)
    if row[_CLASS] == "marketing":  # frequency caps count what was accepted
        conn.execute(_LOG_MARKETING, (account, row[_DEST], created_at))
    return None


# (row, idempotency_key): one accept of an accept_each.
Accepted = tuple[tuple[Any, ...], str | None]


def accept_each(conn: sqlite3.Connection,
                items: Sequence[Accepted]) -> list[tuple[Any, ...] | None]:
    """accept for each item, in order (SqliteStore gathers a loop turn's accepts into one
    operation); each one's answer as accept's."""
    return [accept(conn, row, key) for row, key in items]


def claim_due(conn: sqlite3.Connection, now: float, limit: int,
              held: Mapping[str, int] | None = None,
              ) -> tuple[list[tuple[Any, ...]], dict[str, list[int]]]:
    """Due messages, now 'queued': their rows, and the parts already sent of those with more
    than one. With more than one account due, `limit` is shared between them so that each
    account's messages `held` (in flight) plus those claimed now are as level as they can be:
    one account's backlog never makes another's message wait for it."""
    due = due_accounts(conn, now)
    if not due:
        return [], {}
    # Without INDEXED BY the planner picked messages_status (schema < 6) and sorted every
    # waiting row on each claim: 14 ms per claim at a 16k backlog, which capped relaying.
    if len(due) == 1:  # the common case: one statement, oldest first
        rows = conn.execute(
            f"UPDATE messages SET status = 'queued' WHERE id IN ({_ACCOUNT_DUE}) "
            f"RETURNING {MESSAGE_COLUMNS}", (due[0], now, limit)).fetchall()
    else:
        rows = _claim_fairly(conn, now, limit, due, held or {})
    multi = [r[_ID] for r in rows if r[_SEGMENTS] > 1]
    done: dict[str, list[int]] = {}
    if multi:
        marks = ",".join("?" * len(multi))
        for mid, seq in conn.execute(
            f"SELECT message_id, seq FROM segments WHERE message_id IN ({marks})", multi
        ):
            done.setdefault(mid, []).append(seq)
    return rows, done


_NEXT_ACCOUNT = (
    # The first row after `account` in (account, next_attempt_at) order: the next account with
    # a waiting message and its earliest due time, in one index seek.
    "SELECT account, next_attempt_at FROM messages INDEXED BY messages_due_account "
    "WHERE status IN ('accepted', 'scheduled') AND account > ? "
    "ORDER BY account, next_attempt_at LIMIT 1"
)
_account_of = itemgetter(_ACCOUNT)
_ACCOUNT_DUE = (
    "SELECT id FROM (SELECT id FROM messages INDEXED BY messages_due_account "
    "WHERE status IN ('accepted', 'scheduled') AND account = ? AND next_attempt_at <= ? "
    "ORDER BY next_attempt_at LIMIT ?)"
)
# Accounts claimed by one statement (SQLite allows at most 500 terms in a compound SELECT).
_ACCOUNTS_PER_CLAIM = 64


def due_accounts(conn: sqlite3.Connection, now: float) -> list[str]:
    """Accounts with a message due at `now`: one index seek per account with waiting messages
    (a loose index scan), however many messages each has."""
    due: list[str] = []
    after = ""  # account names are never empty
    while (row := conn.execute(_NEXT_ACCOUNT, (after,)).fetchone()) is not None:
        after = row[0]
        if row[1] <= now:
            due.append(after)
    return due


def fair_shares(accounts: Sequence[str], held: Mapping[str, int],
                limit: int) -> dict[str, int]:
    """Split `limit` between `accounts` max-min fairly: water-filling over what each holds
    already, so the least served get theirs first and the totals end as level as they can."""
    levels = sorted((held.get(a, 0), a) for a in accounts)
    shares = dict.fromkeys(accounts, 0)
    if not levels or limit <= 0:
        return shares
    remaining, level, filled = limit, levels[0][0], 1  # the `filled` lowest are at `level`
    while filled < len(levels) and (levels[filled][0] - level) * filled <= remaining:
        remaining -= (levels[filled][0] - level) * filled
        level = levels[filled][0]
        filled += 1
    level += remaining // filled
    extra = remaining % filled
    for i, (h, account) in enumerate(levels[:filled]):
        shares[account] = level - h + (1 if i < extra else 0)
    return shares


def _claim_fairly(conn: sqlite3.Connection, now: float, limit: int, due: Sequence[str],
                  held: Mapping[str, int]) -> list[tuple[Any, ...]]:
    """Claim up to `limit` over the `due` accounts by fair shares; what an account cannot use
    (it has fewer due) goes to the others in the next round. Each round ends with `limit`
    used up or with at least one account out of due messages, so rounds <= accounts."""
    levels = {a: held.get(a, 0) for a in due}
    rows: list[tuple[Any, ...]] = []
    active = list(due)
    while limit > 0 and active:
        shares = fair_shares(active, levels, limit)
        asked = [a for a in active if shares[a] > 0]
        got: Counter[str] = Counter()
        for start in range(0, len(asked), _ACCOUNTS_PER_CLAIM):
            chunk = asked[start:start + _ACCOUNTS_PER_CLAIM]
            args: list[Any] = []
            for account in chunk:
                args += (account, now, shares[account])
            claimed = conn.execute(
                "UPDATE messages SET status = 'queued' WHERE id IN ("
                + " UNION ALL ".join([_ACCOUNT_DUE] * len(chunk))
                + f") RETURNING {MESSAGE_COLUMNS}", args).fetchall()
            rows += claimed
            got.update(map(_account_of, claimed))
        for account, n in got.items():
            levels[account] += n
            limit -= n
        # An account that got less than its share has no more due now.
        active = [a for a in active if shares[a] == 0 or got[a] == shares[a]]
    return rows


def claim_due_next(conn: sqlite3.Connection, now: float, limit: int,
                   held: Mapping[str, int] | None = None,
                   ) -> tuple[list[tuple[Any, ...]], dict[str, list[int]], bool, float | None]:
    """claim_due, and when it claimed fewer than `limit` (the dispatcher then waits for the
    next due time) also next_due_at after it: (rows, done, whether it looked, the time). One
    operation where the dispatcher made two after each short claim (SqliteStore.next_due_at
    answers from it while no write since could have made a message due sooner)."""
    rows, done = claim_due(conn, now, limit, held)
    if len(rows) >= limit:
        return rows, done, False, None
    return rows, done, True, next_due_at(conn)


def next_due_at(conn: sqlite3.Connection) -> float | None:
    """The earliest due time of a waiting message: the earliest of each account's."""
    earliest: float | None = None
    after = ""
    while (row := conn.execute(_NEXT_ACCOUNT, (after,)).fetchone()) is not None:
        after = row[0]
        if earliest is None or row[1] < earliest:
            earliest = row[1]
    return earliest


_INSERT_PART = ("INSERT OR REPLACE INTO segments "
                "(message_id, seq, provider, provider_msg_id, status, submitted_at) "
                "VALUES (?, ?, ?, ?, 'submitted', ?)")


def _insert_parts(conn: sqlite3.Connection, message_id: str, provider: str, parts: Parts,
                  now: float) -> None:
    conn.executemany(
        _INSERT_PART,
        [(message_id, seq, provider, provider_msg_id, now) for seq, provider_msg_id in parts],
    )


def record_submitted(conn: sqlite3.Connection, message_id: str, provider: str, parts: Parts,
                     now: float) -> str | None:
    """The message's account if it was pending (it is submitted now), else None."""
    _insert_parts(conn, message_id, provider, parts, now)
    return _mark_submitted(conn, message_id, provider, now)


def _mark_submitted(conn: sqlite3.Connection, message_id: str, provider: str,
                    now: float) -> str | None:
    # Never step back from final (a receipt may have got there first).
    row = conn.execute(
        "UPDATE messages SET status = 'submitted', provider = ?, submitted_at = ?, "
        "attempts = attempts + 1 WHERE id = ? AND status IN ('accepted', 'queued') "
        "RETURNING account",
        (provider, now, message_id),
    ).fetchone()
    return None if row is None else str(row[0])


# (message_id, provider, parts, now): one record_submitted of a record_submitted_many.
Submitted = tuple[str, str, Parts, float]


def record_submitted_many(conn: sqlite3.Connection,
                          items: Sequence[Submitted]) -> list[str | None]:
    """record_submitted for each item, in order (SqliteStore gathers a loop turn's calls into
    one operation): every part in one executemany, then each message's state."""
    conn.executemany(
        _INSERT_PART,
        [(message_id, seq, provider, provider_msg_id, now)
         for message_id, provider, parts, now in items for seq, provider_msg_id in parts],
    )
    return [_mark_submitted(conn, message_id, provider, now)
            for message_id, provider, _, now in items]


def reschedule(conn: sqlite3.Connection, message_id: str, provider: str | None, parts: Parts,
               next_attempt_at: float, error: str | None, count_attempt: bool,
               now: float) -> None:
    if parts and provider is not None:
        _insert_parts(conn, message_id, provider, parts, now)
    conn.execute(
        "UPDATE messages SET status = 'accepted', next_attempt_at = ?, error = ?, "
        "provider = COALESCE(?, provider), attempts = attempts + ? "
        "WHERE id = ? AND status = 'queued'",
        (next_attempt_at, error, provider if parts else None, int(count_attempt), message_id),
    )


def hold(conn: sqlite3.Connection, message_id: str, next_attempt_at: float,
         error: str) -> None:
    """A claimed message a rule keeps back (quiet hours, a frequency cap): scheduled again,
    no attempt spent."""
    conn.execute(
        "UPDATE messages SET status = 'scheduled', next_attempt_at = ?, error = ? "
        "WHERE id = ? AND status = 'queued'",
        (next_attempt_at, error, message_id),
    )


def finish(
    conn: sqlite3.Connection,
    message_id: str,
    status: MessageStatus,
    error: str | None,
    now: float,
    prior_status: str | None = None,
) -> tuple[FinalNotice | None, bool]:
    """Make a message final unless it already is; returns the notice and whether the message
    was still pending (accepted/queued) before, for the pending count. `prior_status`: the
    status the caller read in this transaction, to spare reading it again."""
    if prior_status is None:
        prior = conn.execute(
            "SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
        if prior is None:
            return None, False
        prior_status = prior[0]
    if prior_status in FINAL_VALUES:
        return None, False
    row = conn.execute(_FINISH + "WHERE id = ? " + _FINISHED,
                       (status.value, error, now, message_id)).fetchone()
    return _finished(conn, message_id, status, error, now, row), prior_status in PENDING


_FINISH = "UPDATE messages SET status = ?, error = ?, done_at = ? "
_FINISHED = ("RETURNING account, reference, callback_url, submitted_at, provider, receipt_mode, "
             "sender, dest, created_at")


def _finished(conn: sqlite3.Connection, message_id: str, status: MessageStatus,
              error: str | None, now: float, row: Sequence[Any]) -> FinalNotice:
    """What a message made final needs (its callback, its SMPP receipt), from the row its
    UPDATE returned (_FINISHED); its notice."""
    notice = FinalNotice(
        message_id=message_id,
        account=row[0],
        status=status,
        reference=row[1],
        error=error,
        done_at=now,
        callback_url=row[2],
        submitted_at=row[3],
        provider=row[4],
    )
    if notice.callback_url:
        conn.execute(
            "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
            "VALUES (?, ?, ?, ?)",
            (message_id, notice.callback_url, callback_payload(notice), now),
        )
    receipt_mode = row[5]
    if receipt_mode == 1 or (receipt_mode == 2 and status is not MessageStatus.DELIVERED):
        conn.execute(
            "INSERT INTO smpp_receipts (account, message_id, source, dest, status, error, "
            "submitted_at, done_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row[0], message_id, row[6], row[7], status.value, error, row[8], now, now),
        )
    return notice


CANCELLED_ERROR = "cancelled by the client"


def cancel(conn: sqlite3.Connection, account: str, message_id: str,
           now: float) -> tuple[str, FinalNotice | None, bool]:
    """Cancel a message of `account` that is not yet taken for submission: ("cancelled",
    notice, was pending); otherwise ("not_found" or its current status, None, False), which
    is ("cancelled", None, False) for a message an earlier call cancelled."""
    row = conn.execute("SELECT status FROM messages WHERE id = ? AND account = ?",
                       (message_id, account)).fetchone()
    if row is None:
        return "not_found", None, False
    if row[0] not in _WAITING_VALUES:  # queued or later: the operator may have it already
        return str(row[0]), None, False
    notice, was_pending = finish(conn, message_id, MessageStatus.CANCELLED, CANCELLED_ERROR, now,
                                 row[0])
    return "cancelled", notice, was_pending


def release_waiting(conn: sqlite3.Connection, now: float) -> int:
    # On the waiting messages' index: no whole-table scan (the writer holds every write
    # meanwhile) at each bind that comes up.
    return conn.execute(
        "UPDATE messages INDEXED BY messages_due_account SET next_attempt_at = ? "
        "WHERE status IN ('accepted', 'scheduled') AND status = 'accepted' "
        "AND next_attempt_at > ? AND error = ?",
        (now, now, NO_PROVIDER),
    ).rowcount


def apply_receipts(conn: sqlite3.Connection,
                   updates: Sequence[ReceiptUpdate]) -> list[tuple[ReceiptResult, bool]]:
    return [_apply_receipt(conn, u) for u in updates]


# A final receipt's part: found by the provider's id and updated in one statement. The
# subquery keeps the old statement pair's choice of one part, should two share an id.
_RECEIPT_PART = (
    "UPDATE segments SET status = ?, error = ?, done_at = ? WHERE (message_id, seq) = "
    "(SELECT message_id, seq FROM segments WHERE provider = ? AND provider_msg_id = ? LIMIT 1) "
    "RETURNING message_id")
# The usual final receipt: for a message submitted in one part, or one that failed, the
# message is made final in the same statement that checks it; 2 statements a receipt, not 4.
_RECEIPT_FINAL = (_FINISH + "WHERE id = ? AND status = 'submitted' AND (segments = 1 OR ?) "
                  + _FINISHED)


def _apply_receipt(conn: sqlite3.Connection, u: ReceiptUpdate) -> tuple[ReceiptResult, bool]:
    if u.status is MessageStatus.SUBMITTED:  # intermediate (enroute, accepted): note only
        row = conn.execute(
            "SELECT message_id FROM segments WHERE provider = ? AND provider_msg_id = ?",
            (u.provider, u.provider_msg_id),
        ).fetchone()
        found = None if row is None else str(row[0])
        return ReceiptResult(u, matched=found is not None, message_id=found, final=None), False
    row = conn.execute(_RECEIPT_PART, (u.status.value, u.error, u.received_at, u.provider,
                                       u.provider_msg_id)).fetchone()
    if row is None:
        return ReceiptResult(u, matched=False, message_id=None, final=None), False
    message_id = row[0]
    done = conn.execute(_RECEIPT_FINAL, (u.status.value, u.error, u.received_at, message_id,
                                         u.status is not MessageStatus.DELIVERED)).fetchone()
    if done is not None:  # it was submitted (not pending) and is final now
        final = _finished(conn, message_id, u.status, u.error, u.received_at, done)
        return ReceiptResult(u, matched=True, message_id=message_id, final=final), False
    msg = conn.execute(
        "SELECT segments, status FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    if msg is None or msg[1] in FINAL_VALUES:
        return ReceiptResult(u, matched=True, message_id=message_id, final=None), False
    final_status: MessageStatus | None = None
    if u.status is not MessageStatus.DELIVERED:
        final_status = u.status  # one part finally failed: the message did
    elif msg[0] == 1:
        final_status = MessageStatus.DELIVERED
    else:
        delivered = conn.execute(
            "SELECT COUNT(*) FROM segments WHERE message_id = ? AND status = 'delivered'",
            (message_id,),
        ).fetchone()[0]
        if delivered >= msg[0]:
            final_status = MessageStatus.DELIVERED
    notice, was_pending = None, False
    if final_status is not None:
        notice, was_pending = finish(
            conn, message_id, final_status, u.error, u.received_at, msg[1]
        )
    return ReceiptResult(u, matched=True, message_id=message_id, final=notice), was_pending


FAIR_SCAN = 5000  # due callbacks looked at by a fair read (its cost grows with this)
# "scheme://authority" of a callback URL, lower case: the partition of a fair read.
_DESTINATION = ("lower(substr(c.url, 1, instr(substr(c.url, instr(c.url, '://') + 3) || '/', '/')"
                " + instr(c.url, '://') + 1))")


def due_callbacks(conn: sqlite3.Connection, now: float, limit: int,
                  per_destination: int | None = None) -> list[tuple[Any, ...]]:
    """The oldest due callbacks, with the account of their message ('' for an MO). With
    ``per_destination`` (a fair read): of the oldest FAIR_SCAN due ones, at most that many per
    (account, destination), so that one account's or one receiver's backlog does not hide the
    others' callbacks."""
    if per_destination is None:
        return conn.execute(
            "SELECT c.id, c.message_id, c.url, c.payload, c.attempts, "
            "COALESCE(m.account, '') FROM callbacks c LEFT JOIN messages m "
            "ON m.id = c.message_id WHERE c.given_up = 0 AND c.next_attempt_at <= ? "
            "ORDER BY c.next_attempt_at LIMIT ?",
            (now, limit),
        ).fetchall()
    return conn.execute(
        "SELECT id, message_id, url, payload, attempts, account FROM ("
        " SELECT c.id, c.message_id, c.url, c.payload, c.attempts, c.next_attempt_at,"
        " COALESCE(m.account, '') AS account, row_number() OVER ("
        f"  PARTITION BY COALESCE(m.account, ''), {_DESTINATION}"
        "  ORDER BY c.next_attempt_at, c.id) AS rank"
        " FROM (SELECT * FROM callbacks WHERE given_up = 0 AND next_attempt_at <= ?"
        "  ORDER BY next_attempt_at LIMIT ?) c"
        " LEFT JOIN messages m ON m.id = c.message_id"
        ") WHERE rank <= ? ORDER BY next_attempt_at, id LIMIT ?",
        (now, FAIR_SCAN, per_destination, limit),
    ).fetchall()


def callback_destination(url: str) -> str:
    """Where a callback goes, for sharing: "scheme://host:port" (lower case, no credentials)."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return ""
    return f"{parts.scheme.lower()}://{host}:{port or ''}"


def callbacks_done(conn: sqlite3.Connection, job_ids: Sequence[int]) -> None:
    conn.executemany("DELETE FROM callbacks WHERE id = ?", [(job_id,) for job_id in job_ids])


def callback_retry(conn: sqlite3.Connection, job_id: int, next_attempt_at: float,
                   error: str) -> None:
    conn.execute(
        "UPDATE callbacks SET attempts = attempts + 1, next_attempt_at = ?, "
        "last_error = ? WHERE id = ?",
        (next_attempt_at, error, job_id),
    )


def callback_give_up(conn: sqlite3.Connection, job_id: int, error: str) -> None:
    conn.execute(
        "UPDATE callbacks SET attempts = attempts + 1, given_up = 1, last_error = ? "
        "WHERE id = ?",
        (error, job_id),
    )


def enqueue_callback(conn: sqlite3.Connection, url: str, payload: str, now: float) -> None:
    conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
        "VALUES ('', ?, ?, ?)", (url, payload, now))


def due_smpp_receipts(conn: sqlite3.Connection, account: str, now: float,
                      limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, account, message_id, source, dest, status, error, submitted_at, "
        "done_at, attempts, kind, text FROM smpp_receipts WHERE account = ? "
        "AND given_up = 0 "
        "AND next_attempt_at <= ? ORDER BY id LIMIT ?",
        (account, now, limit),
    ).fetchall()


def enqueue_smpp_mo(conn: sqlite3.Connection, account: str, source: str, dest: str, text: str,
                    now: float) -> None:
    conn.execute(
        "INSERT INTO smpp_receipts (kind, text, account, message_id, source, dest, status, "
        "submitted_at, done_at, next_attempt_at) "
        "VALUES ('mo', ?, ?, '', ?, ?, 'delivered', ?, ?, ?)",
        (text, account, source, dest, now, now, now))


def smpp_receipt_done(conn: sqlite3.Connection, receipt_id: int) -> None:
    conn.execute("DELETE FROM smpp_receipts WHERE id = ?", (receipt_id,))


def smpp_receipt_retry(conn: sqlite3.Connection, receipt_id: int, next_attempt_at: float,
                       give_up: bool) -> None:
    conn.execute(
        "UPDATE smpp_receipts SET attempts = attempts + 1, next_attempt_at = ?, "
        "given_up = ? WHERE id = ?",
        (next_attempt_at, int(give_up), receipt_id),
    )


def add_optout(conn: sqlite3.Connection, account: str, number: str, source: str,
               now: float, scope: str = "marketing") -> bool:
    """Added, or a "marketing" opt-out widened to "all" (then it takes the new time and
    source); never narrowed."""
    return bool(conn.execute(
        "INSERT INTO optouts (account, number, created_at, source, scope) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (account, number) DO UPDATE SET created_at = excluded.created_at, "
        "source = excluded.source, scope = excluded.scope "
        "WHERE optouts.scope = 'marketing' AND excluded.scope = 'all'",
        (account, number, now, source, scope)).rowcount)


def remove_optout(conn: sqlite3.Connection, account: str, number: str) -> bool:
    return bool(conn.execute(
        "DELETE FROM optouts WHERE account = ? AND number = ?", (account, number)).rowcount)


# The operations that write the optouts table: the writer process marks the groups that run
# them for the readers' in-memory copies of it (optout_view.py).
OPTOUT_WRITES = frozenset({"add_optout", "remove_optout", "remove_optout_logged"})

OPS: dict[str, Callable[..., Any]] = {
    fn.__name__: fn for fn in (
        accept_many, accept, accept_each, claim_due, claim_due_next, next_due_at, record_submitted,
        record_submitted_many, reschedule, finish,
        release_waiting, apply_receipts, due_callbacks, callbacks_done, callback_retry,
        callback_give_up, enqueue_callback, due_smpp_receipts, enqueue_smpp_mo,
        smpp_receipt_done, smpp_receipt_retry, add_optout, remove_optout, cancel, hold,
    )
}


# ---- receipts that never come (overdue.py) -----------------------------------------------------

# What claim_overdue_segments returns per segment to query.
OverdueRow = tuple[str, int, str, str, str]  # message_id, seq, provider_msg_id, sender, kind


def claim_overdue_segments(conn: sqlite3.Connection, provider: str, submitted_before: float,
                           queried_before: float, now: float, limit: int) -> list[OverdueRow]:
    """Segments sent to `provider` before `submitted_before` that have no final receipt and
    were not queried since `queried_before`: marked as queried now, and those of messages still
    'submitted' returned. Parts of messages already final (another part failed) leave the
    open set ('closed'), so that they are not looked at again."""
    rows = conn.execute(
        "SELECT s.message_id, s.seq, s.provider_msg_id, m.sender, m.sender_kind, m.status "
        "FROM segments AS s INDEXED BY segments_open JOIN messages AS m ON m.id = s.message_id "
        "WHERE s.provider = ? AND s.status = 'submitted' AND s.submitted_at <= ? "
        "AND (s.queried_at IS NULL OR s.queried_at <= ?) ORDER BY s.submitted_at LIMIT ?",
        (provider, submitted_before, queried_before, limit),
    ).fetchall()
    conn.executemany(
        "UPDATE segments SET status = 'closed' WHERE message_id = ? AND seq = ?",
        [(r[0], r[1]) for r in rows if r[5] in FINAL_VALUES])
    conn.executemany(
        "UPDATE segments SET queried_at = ? WHERE message_id = ? AND seq = ?",
        [(now, r[0], r[1]) for r in rows if r[5] not in FINAL_VALUES])
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[5] == MessageStatus.SUBMITTED.value]


def expire_unreceipted(conn: sqlite3.Connection, submitted_before: float, now: float,
                       limit: int, error: str) -> list[FinalNotice]:
    """Messages submitted before `submitted_before` and still without a final receipt become
    final 'unknown' (with their callback and SMPP receipt, as any final state)."""
    ids = conn.execute(
        "SELECT id FROM messages INDEXED BY messages_submitted WHERE status = 'submitted' "
        "AND submitted_at <= ? ORDER BY submitted_at LIMIT ?",
        (submitted_before, limit),
    ).fetchall()
    notices = []
    for (message_id,) in ids:
        notice, _ = finish(conn, message_id, MessageStatus.UNKNOWN, error, now, "submitted")
        if notice is not None:
            notices.append(notice)
    return notices


OPS.update({fn.__name__: fn for fn in (claim_overdue_segments, expire_unreceipted)})


def waiting_added(name: str, args: Sequence[Any], result: Any) -> int:
    """How many waiting messages an `accept` or `accept_many` that succeeded stored."""
    if name == "accept":
        return int(result is None and args[0][_STATUS] in _WAITING_VALUES)
    return sum(1 for row in args[0] if row[_STATUS] in _WAITING_VALUES)


def accepted_waiting(row: Sequence[Any], result: Any) -> tuple[str, float] | None:
    """The account and due time of the waiting message an `accept` (of `row`, answered
    `result`) stored; None when it stored none (an idempotent repeat, a message not waiting)."""
    if result is not None or row[_STATUS] not in _WAITING_VALUES:
        return None
    return row[_ACCOUNT], row[_NEXT]


def waiting_due(rows: Sequence[Sequence[Any]]) -> float | None:
    """The earliest due time of the waiting messages among message `rows`; None: none."""
    times = [row[_NEXT] for row in rows if row[_STATUS] in _WAITING_VALUES]
    return min(times) if times else None


def waiting_by_account(name: str, args: Sequence[Any], result: Any) -> Counter[str]:
    """waiting_added() per account: the per-account pending counts."""
    if name == "accept":
        stored = accepted_waiting(args[0], result)
        return Counter({stored[0]: 1} if stored is not None else {})
    return Counter(row[_ACCOUNT] for row in args[0] if row[_STATUS] in _WAITING_VALUES)


def pending_change(name: str, args: Sequence[Any], result: Any) -> Counter[str]:
    """How an operation that succeeded changed the pending counts, per account: accepts add
    the waiting messages they stored, a cancel of a pending message takes one away."""
    if name in ("accept", "accept_many"):
        return waiting_by_account(name, args, result)
    if name == "accept_each":
        return Counter(row[_ACCOUNT] for (row, _), prior in zip(args[0], result, strict=True)
                       if prior is None and row[_STATUS] in _WAITING_VALUES)
    if name == "cancel" and result[2]:  # (outcome, notice, was pending)
        return Counter({args[0]: -1})
    return Counter()


# ---- tools: run on the writer's connection outside any transaction (SqliteStore.run_on_writer)

# The PRAGMAs a tool may read or set: faults for tests (a full disk, a read-only file) and the
# writer's settings.
TOOL_PRAGMAS = frozenset({"max_page_count", "page_count", "freelist_count", "query_only",
                          "busy_timeout"})
_trace: list[str] = []


def pragma(conn: sqlite3.Connection, name: str, value: int | None) -> int | None:
    """PRAGMA `name` (TOOL_PRAGMAS), set to `value` unless None; what it answers."""
    if name not in TOOL_PRAGMAS:
        raise StoreError(f"PRAGMA {name} is not a writer tool")
    sql = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {int(value)}"
    row = conn.execute(sql).fetchone()
    return None if row is None else int(row[0])


def trace(conn: sqlite3.Connection, on: bool) -> list[str]:
    """Start recording the writer's statements (`on`), or stop and return them."""
    got = _trace[:]
    _trace.clear()
    conn.set_trace_callback(_trace.append if on else None)
    return [] if on else got


TOOLS: dict[str, Callable[..., Any]] = {fn.__name__: fn for fn in (pragma, trace)}


# ---- group commit ------------------------------------------------------------------------------

class Op:
    """One operation to run: `fn(conn, *args)` (a function of OPS or TOOLS; no closure per
    operation)."""

    __slots__ = ("args", "bare", "error", "fn", "name", "ref", "result")

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any], ref: Any,
                 bare: bool = False, name: str = ""):
        self.fn = fn
        self.args = args
        self.ref = ref  # the caller's handle: a future (thread) or a request id (process)
        self.bare = bare  # a tool: run outside any transaction (run_on_writer)
        self.name = name  # the operation's, in OPS
        self.result: Any = None
        self.error: BaseException | None = None


def _is_fault(exc: BaseException) -> bool:
    """A fault of the database rather than of one operation: full, locked, read-only, I/O
    error (OperationalError) or corrupt (a bare DatabaseError)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


@dataclass
class WriteFigures:
    """What readiness and the metrics know of the writer: group commits done, write faults
    (groups failed, the last error), and when (monotonic) the last group failed and the last
    one committed. The writer process sends it whole with each answer."""

    commits: int = 0
    write_errors: int = 0
    last_write_error: str | None = None
    last_write_error_at: float = 0.0
    last_write_ok_at: float = 0.0

    def committed(self) -> float:
        self.commits += 1
        self.last_write_ok_at = time.monotonic()
        return self.last_write_ok_at

    def failed(self, error: str) -> None:
        self.write_errors += 1
        self.last_write_error = error
        self.last_write_error_at = time.monotonic()


class GroupWriter:
    """Runs groups of operations on the writer connection, one transaction per group, and
    keeps the figures readiness and metrics read."""

    def __init__(self, conn: sqlite3.Connection,
                 on_commit: Callable[[float], None] | None = None) -> None:
        self.conn = conn
        self._on_commit = on_commit
        self.figures = WriteFigures()

    def run(self, batch: list[Op]) -> None:
        """Set every op's result or error."""
        conn = self.conn
        todo = batch
        if any(op.bare for op in batch):  # tools: before the group, outside it
            todo = [op for op in batch if not op.bare]
            for op in batch:
                if op.bare:
                    try:
                        op.result = op.fn(conn, *op.args)
                    except Exception as exc:
                        op.error = exc
        try:
            if todo:
                self._commit(todo)
        except Exception as exc:
            if _is_fault(exc):  # disk full, I/O error, locked, read-only: all fail
                self._fail(todo, exc)
            else:
                # One op failed on its own (a bug or a constraint): run each in its own
                # transaction so it cannot sink its neighbours. Rare: the fast path stays lean.
                for op in todo:
                    try:
                        self._commit([op])
                    except Exception as op_exc:
                        if _is_fault(op_exc):
                            self._fail([op], op_exc)
                        else:
                            op.result, op.error = None, op_exc

    def _commit(self, batch: list[Op]) -> None:
        conn = self.conn
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                op.result = op.fn(conn, *op.args)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        done = self.figures.committed()
        if self._on_commit is not None:
            # The group is committed: a failing hook must not make run() redo it.
            with contextlib.suppress(Exception):
                self._on_commit(done - started)

    def _fail(self, batch: list[Op], exc: Exception) -> None:
        err = StoreError(f"store write failed: {exc}")
        for op in batch:
            op.result, op.error = None, err
        self.figures.failed(str(exc))


# ---- message retention ([messages] keep_text, retention_days; issue 19 item 11) -------------
# Added as their own operations (not folded into finish/claim) so the retention task runs them
# between other writes. Message ids begin with their creation time in milliseconds (12 hex
# digits, model.new_message_id), so "created before T" is a range of the primary key.

TEXT_KEPT_INDEX = ("CREATE INDEX IF NOT EXISTS messages_text_kept ON messages (status) "
                   "WHERE body != ''")


def id_bound(ts: float) -> str:
    """The smallest message id created at or after ``ts``: ids below it are older."""
    return f"{max(0, int(ts * 1000)):012x}"


def erase_texts(conn: sqlite3.Connection, keep_text: str, limit: int) -> int:
    """Blank the text of messages past the point ``keep_text`` keeps it to: "until_final":
    final messages; "never": every message no longer waiting to be sent (submitted or final).
    The partial index (made on first use) holds only rows that still have text, so a sweep
    never reads the erased history."""
    if keep_text == "always":
        return 0
    conn.execute(TEXT_KEPT_INDEX)
    keep = ("accepted", "scheduled", "queued", "submitted") if keep_text == "until_final" else (
        "accepted", "scheduled", "queued")
    marks = ",".join("?" * len(keep))
    return conn.execute(
        "UPDATE messages SET body = '' WHERE id IN (SELECT id FROM messages "
        f"INDEXED BY messages_text_kept WHERE body != '' AND status NOT IN ({marks}) LIMIT ?)",
        (*keep, limit),
    ).rowcount


def purge_before(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Delete final messages created before ``cutoff`` (at most ``limit``) with their segments,
    finished callbacks and SMPP receipts, and marketing_log rows older than ``cutoff``."""
    finals = sorted(FINAL_VALUES)
    marks = ",".join("?" * len(finals))
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM messages WHERE id < ? AND status IN ({marks}) ORDER BY id LIMIT ?",
        (id_bound(cutoff), *finals, limit),
    )]
    if len(ids) < limit:  # decimal ids (message_id_format) sort after every hex one: by time
        ids += [r[0] for r in conn.execute(
            f"SELECT id FROM messages WHERE id >= '1' AND id < ':' AND created_at < ? "
            f"AND status IN ({marks}) ORDER BY id LIMIT ?",
            (cutoff, *finals, limit - len(ids)),
        )]
    if not ids:
        conn.execute("DELETE FROM marketing_log WHERE sent_at < ?", (cutoff,))
        return 0
    rows = [(i,) for i in ids]
    conn.executemany("DELETE FROM segments WHERE message_id = ?", rows)
    conn.executemany("DELETE FROM messages WHERE id = ?", rows)
    conn.executemany("DELETE FROM callbacks WHERE message_id = ? AND given_up = 1", rows)
    conn.execute("DELETE FROM smpp_receipts WHERE given_up = 1 AND done_at < ?", (cutoff,))
    conn.execute("DELETE FROM idempotency WHERE created_at < ?", (cutoff,))
    conn.execute("DELETE FROM marketing_log WHERE sent_at < ?", (cutoff,))
    return len(ids)


# ---- consent records and opt-out removals (schema 2; issue 19 item 6) ---------------------

def add_consent(conn: sqlite3.Connection, account: str, number: str, scope: str, source: str,
                consented_at: float, now: float) -> int:
    row = conn.execute(
        "INSERT INTO consents (account, number, scope, source, consented_at, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (account, number, scope, source, consented_at, now)).fetchone()
    return int(row[0])


def remove_optout_logged(conn: sqlite3.Connection, account: str, number: str, removed_by: str,
                         now: float) -> bool:
    row = conn.execute(
        "DELETE FROM optouts WHERE account = ? AND number = ? "
        "RETURNING created_at, source, scope", (account, number)).fetchone()
    if row is None:
        return False
    conn.execute(
        "INSERT INTO optout_removals (account, number, opted_out_at, source, removed_at, "
        "removed_by, scope) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (account, number, row[0], row[1], now, removed_by, row[2]))
    return True


OPS.update({fn.__name__: fn for fn in (erase_texts, purge_before, add_consent,
                                       remove_optout_logged)})


def recover(conn: sqlite3.Connection) -> int:
    """Claimed (queued) messages back to accepted, due again: the dispatcher that claimed them
    is gone (SqliteStore.recover, at open). How many."""
    return conn.execute("UPDATE messages SET status = 'accepted' WHERE status = 'queued'"
                        ).rowcount


OPS["recover"] = recover
