-- Audit: every state change with who made it (actor), what (action), on which resource, at which
-- config commit and revision, and how it ended (outcome: a deployment status). Append-only.
-- Written by the stores: by transition() when a deployment reaches a final status, and by
-- record_audit() for changes that are not deployments (suspend, resume, …).
-- resource/deployment are identifiers, not foreign keys: an audit trail outlives what it names.

CREATE TABLE tb_audit_event (
    pk_audit_event INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    identifier     TEXT NOT NULL UNIQUE,      -- "<deployment identifier>:<outcome>" or id-based
    at             TEXT NOT NULL,
    actor          TEXT NOT NULL,             -- cli:<user>@<host>, webhook:<provider>:<id>, poll…
    action         TEXT NOT NULL,             -- deploy, run, install, rollback, prune, suspend…
    resource       TEXT,                      -- "environment/Kind/name"
    deployment     TEXT,                      -- "environment/Kind/name#<seq>"
    config_commit  TEXT,
    revision       TEXT,
    outcome        TEXT NOT NULL
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
