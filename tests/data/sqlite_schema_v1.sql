-- The SQLite schema (version 1) as the first release made it, frozen: a database created by
-- that release is rebuilt from this file to test migrating forward. Never edit it (not even
-- its indentation: SQLite keeps each statement's text, and the test compares them).
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        dest TEXT NOT NULL,
        region TEXT,
        sender TEXT NOT NULL,
        sender_kind TEXT NOT NULL,
        body TEXT NOT NULL,
        encoding TEXT NOT NULL,
        segments INTEGER NOT NULL,
        concat_ref INTEGER NOT NULL,
        message_class TEXT NOT NULL,
        receipt_mode INTEGER NOT NULL,
        status TEXT NOT NULL,
        callback_url TEXT,
        reference TEXT,
        provider TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        done_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX messages_due ON messages (next_attempt_at)
        WHERE status IN ('accepted', 'scheduled');
    CREATE INDEX messages_by_dest ON messages (dest, created_at);
    CREATE INDEX messages_status ON messages (status);
    CREATE TABLE segments (
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        provider TEXT NOT NULL,
        provider_msg_id TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL,
        PRIMARY KEY (message_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX segments_by_provider_id ON segments (provider, provider_msg_id);
    CREATE TABLE idempotency (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (account, key)
    ) WITHOUT ROWID;
    CREATE TABLE callbacks (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        given_up INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX callbacks_due ON callbacks (next_attempt_at) WHERE given_up = 0;
    CREATE TABLE smpp_receipts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'receipt',
        text TEXT,
        account TEXT NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL,
        dest TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        given_up INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX smpp_receipts_due ON smpp_receipts (account, next_attempt_at)
        WHERE given_up = 0;
    CREATE TABLE optouts (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        created_at REAL NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (account, number)
    ) WITHOUT ROWID;
    CREATE TABLE marketing_log (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        sent_at REAL NOT NULL
    );
    CREATE INDEX marketing_log_by_number ON marketing_log (account, number, sent_at);
    