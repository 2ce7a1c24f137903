-- What each notification destination was told, shared by every replica on this database: one
-- row per (destination, subject) open problem. A replica sends a problem only after it claimed
-- its row (inserted it, or took it over once the repeat interval passed or the problem changed),
-- so a refused commit seen by every replica of `daemon --ha` is sent once. A recovery deletes the
-- row; the replica whose DELETE removed it sends the recovery.

CREATE TABLE tb_notification (
    pk_notification BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id              CHAR(36)     NOT NULL UNIQUE,
    identifier      VARCHAR(768) NOT NULL UNIQUE,  -- "<destination> <subject>"
    destination     VARCHAR(255) NOT NULL,         -- operator1:json, <env>/Notifier/<name>
    subject         VARCHAR(500) NOT NULL,         -- a resource key, "commits" or "daemon"
    kind            VARCHAR(32)  NOT NULL,         -- the problem told (an EventKind)
    message_id      VARCHAR(64)  NOT NULL,         -- the message that claimed it
    sent_at         DATETIME(6)  NOT NULL,         -- when it was claimed (UTC)
    delivered_at    DATETIME(6),                   -- NULL: claimed, not delivered yet
    UNIQUE KEY uq_notification (destination, subject),
    KEY ix_notification_message_id (message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE VIEW v_notification AS
SELECT n.id, n.identifier, n.destination, n.subject, n.kind, n.message_id, n.sent_at,
       n.delivered_at
FROM tb_notification AS n;
