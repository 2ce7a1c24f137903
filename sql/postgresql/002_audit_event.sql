-- Audit: every state change with who made it (actor), what (action), on which resource, at which
-- config commit and revision, and how it ended (outcome: a deployment status). Append-only.
-- Same table and view as sql/sqlite/004_audit_event.sql. resource/deployment are identifiers,
-- not foreign keys: an audit trail outlives what it names.

CREATE TABLE tb_audit_event (
    pk_audit_event BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             UUID        NOT NULL UNIQUE,
    identifier     TEXT        NOT NULL UNIQUE,
    at             TIMESTAMPTZ NOT NULL,
    actor          TEXT        NOT NULL,
    action         TEXT        NOT NULL,
    resource       TEXT,
    deployment     TEXT,
    config_commit  TEXT,
    revision       TEXT,
    outcome        TEXT        NOT NULL
                   CHECK (outcome IN ('pending', 'in_progress', 'succeeded', 'failed',
                                      'rolled_back', 'rollback_failed', 'cancelled')),
    message        TEXT
);

CREATE INDEX ix_audit_event_at ON tb_audit_event (at);
CREATE INDEX ix_audit_event_resource_at ON tb_audit_event (resource, at);

CREATE VIEW v_audit_event AS
SELECT a.id, a.identifier, a.at, a.actor, a.action, a.resource, a.deployment, a.config_commit,
       a.revision, a.outcome, a.message
FROM tb_audit_event AS a;
