-- What each notification destination was told, shared by every replica on this database: one
-- row per (destination, subject) open problem. A replica sends a problem only after it claimed
-- its row (inserted it, or took it over once the repeat interval passed or the problem changed),
-- so a refused commit seen by every replica of `daemon --ha` is sent once. A recovery deletes the
-- row; the replica whose DELETE removed it sends the recovery.

CREATE TABLE tb_notification (
    pk_notification BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID        NOT NULL UNIQUE,
    identifier      TEXT        NOT NULL UNIQUE,   -- "<destination> <subject>"
    destination     TEXT        NOT NULL,          -- operator1:json, <env>/Notifier/<name>
    subject         TEXT        NOT NULL,          -- a resource key, "commits" or "daemon"
    kind            TEXT        NOT NULL,          -- the problem told (an EventKind)
    message_id      TEXT        NOT NULL,          -- the message that claimed it
    sent_at         TIMESTAMPTZ NOT NULL,          -- when it was claimed
    delivered_at    TIMESTAMPTZ,                   -- NULL: claimed, not delivered yet
    UNIQUE (destination, subject)
);

CREATE INDEX ix_notification_message_id ON tb_notification (message_id);

CREATE VIEW v_notification AS
SELECT n.id, n.identifier, n.destination, n.subject, n.kind, n.message_id, n.sent_at,
       n.delivered_at
FROM tb_notification AS n;
