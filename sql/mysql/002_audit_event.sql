-- Audit: every state change with who made it (actor), what (action), on which resource, at which
-- config commit and revision, and how it ended (outcome: a deployment status). Append-only.
-- Same table and view as sql/sqlite/004_audit_event.sql. resource/deployment are identifiers,
-- not foreign keys: an audit trail outlives what it names. The (resource, at) index uses a
-- prefix of resource: InnoDB keys stop at 3072 bytes.

CREATE TABLE tb_audit_event (
    pk_audit_event BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id             CHAR(36)     NOT NULL UNIQUE,
    identifier     VARCHAR(768) NOT NULL UNIQUE,
    at             DATETIME(6)  NOT NULL,
    actor          VARCHAR(255) NOT NULL,
    action         VARCHAR(32)  NOT NULL,
    resource       VARCHAR(768),
    deployment     VARCHAR(800),
    config_commit  VARCHAR(255),
    revision       VARCHAR(255),
    outcome        VARCHAR(16)  NOT NULL
                   CHECK (outcome IN ('pending', 'in_progress', 'succeeded', 'failed',
                                      'rolled_back', 'rollback_failed', 'cancelled')),
    message        LONGTEXT,
    KEY ix_audit_event_at (at),
    KEY ix_audit_event_resource_at (resource(255), at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE VIEW v_audit_event AS
SELECT a.id, a.identifier, a.at, a.actor, a.action, a.resource, a.deployment, a.config_commit,
       a.revision, a.outcome, a.message
FROM tb_audit_event AS a;
