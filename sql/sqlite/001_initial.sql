-- Fraisier state schema, SQLite dialect (Trinity pattern, DESIGN "Database").
--
-- Write tables tb_<entity>: pk_<entity> (internal integer key), id (public UUID), identifier
-- (human business key); foreign keys fk_<entity> point to pk_<entity>. Reads go through the
-- v_<entity> views, which expose id/identifier, never pk_.
-- Timestamps: ISO-8601 UTC text with microseconds ("2026-11-26T09:03:29.123456+00:00"), written
-- by the application, so they sort lexically and read back as aware datetimes.
-- JSON columns hold canonical JSON (secret references only, never resolved values).
-- Applied by reconciler/state/migrations.py in one transaction; do not edit once released:
-- add a new NNN_name.sql instead (the runner refuses an applied file whose checksum changed).

CREATE TABLE tb_resource (
    pk_resource      INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    identifier       TEXT    NOT NULL UNIQUE,          -- "environment/Kind/name"
    environment      TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    desired_revision TEXT,
    desired_hash     TEXT,
    desired_spec     TEXT    CHECK (desired_spec IS NULL OR json_valid(desired_spec)),
    applied_revision TEXT,
    applied_hash     TEXT,
    applied_spec     TEXT    CHECK (applied_spec IS NULL OR json_valid(applied_spec)),
    config_commit    TEXT,
    sync_status      TEXT    NOT NULL DEFAULT 'Unknown'
                     CHECK (sync_status IN ('Synced', 'OutOfSync', 'Unknown')),
    health_status    TEXT    NOT NULL DEFAULT 'Unknown'
                     CHECK (health_status IN ('Healthy', 'Degraded', 'Progressing', 'Missing',
                                              'Suspended', 'Unknown')),
    last_result      TEXT
                     CHECK (last_result IS NULL OR last_result IN
                            ('pending', 'in_progress', 'succeeded', 'failed', 'rolled_back',
                             'rollback_failed', 'cancelled')),
    last_error       TEXT,
    failed_revision  TEXT,                              -- rolled back: waits for a new revision
    suspended        INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
    deleted          INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    UNIQUE (environment, kind, name)
);

CREATE TABLE tb_deployment (
    pk_deployment INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    identifier    TEXT    NOT NULL UNIQUE,             -- "environment/Kind/name#<seq>"
    fk_resource   INTEGER NOT NULL REFERENCES tb_resource (pk_resource) ON DELETE RESTRICT,
    seq           INTEGER NOT NULL CHECK (seq >= 1),   -- 1, 2, 3... per resource
    status        TEXT    NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                    'rolled_back', 'rollback_failed', 'cancelled')),
    from_revision TEXT,
    to_revision   TEXT    NOT NULL,
    config_commit TEXT,
    "trigger"     TEXT    NOT NULL,                    -- quoted: reserved in MySQL
    strategy      TEXT    NOT NULL,
    error         TEXT,
    output        TEXT,
    exit_code     INTEGER,
    spec          TEXT    CHECK (spec IS NULL OR json_valid(spec)),
    created_at    TEXT    NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    UNIQUE (fk_resource, seq)
);

-- Crash recovery scans only unfinished deployments.
CREATE INDEX ix_deployment_unfinished ON tb_deployment (pk_deployment)
    WHERE status IN ('pending', 'in_progress');
CREATE INDEX ix_deployment_created_at ON tb_deployment (created_at);
CREATE INDEX ix_deployment_resource_status ON tb_deployment (fk_resource, status, seq);

-- Backstop for reconciler.state.store.TRANSITIONS: a hand-written UPDATE cannot rewrite history
-- either. tests/state/test_schema.py checks this trigger against TRANSITIONS pair by pair.
CREATE TRIGGER tr_deployment_status_transition
BEFORE UPDATE OF status ON tb_deployment
FOR EACH ROW
WHEN NEW.status <> OLD.status AND NOT (
       (OLD.status = 'pending'     AND NEW.status IN ('in_progress', 'cancelled', 'failed'))
    OR (OLD.status = 'in_progress' AND NEW.status IN ('succeeded', 'failed', 'rolled_back',
                                                      'rollback_failed', 'cancelled'))
    OR (OLD.status = 'failed'      AND NEW.status IN ('rolled_back', 'rollback_failed'))
)
BEGIN
    SELECT RAISE(ABORT, 'illegal deployment status transition');
END;

CREATE TABLE tb_deployment_event (
    pk_deployment_event INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    identifier          TEXT    NOT NULL UNIQUE,       -- "<deployment identifier>/event/<seq>"
    fk_deployment       INTEGER NOT NULL
                        REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL CHECK (seq >= 1),
    status              TEXT    NOT NULL
                        CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                          'rolled_back', 'rollback_failed', 'cancelled')),
    message             TEXT,
    at                  TEXT    NOT NULL,
    UNIQUE (fk_deployment, seq)
);

CREATE TABLE tb_deployment_step (
    pk_deployment_step INTEGER PRIMARY KEY,
    id                 TEXT    NOT NULL UNIQUE,
    identifier         TEXT    NOT NULL UNIQUE,        -- "<deployment identifier>/step/<seq>"
    fk_deployment      INTEGER NOT NULL
                       REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE,
    seq                INTEGER NOT NULL CHECK (seq >= 1),
    action             TEXT    NOT NULL,
    instance           TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'started'
                       CHECK (status IN ('started', 'succeeded', 'failed')),
    detail             TEXT,
    started_at         TEXT    NOT NULL,
    finished_at        TEXT,
    UNIQUE (fk_deployment, seq)
);

CREATE TABLE tb_lock (
    pk_lock     INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    identifier  TEXT NOT NULL UNIQUE,                  -- the lock name
    name        TEXT NOT NULL UNIQUE,
    owner       TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

CREATE TABLE tb_webhook_delivery (
    pk_webhook_delivery INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    identifier          TEXT NOT NULL UNIQUE,          -- "<provider>/<delivery_id>"
    provider            TEXT NOT NULL,
    delivery_id         TEXT NOT NULL,
    received_at         TEXT NOT NULL,
    UNIQUE (provider, delivery_id)
);

CREATE INDEX ix_webhook_delivery_received_at ON tb_webhook_delivery (received_at);

-- Read views ------------------------------------------------------------------------------------

CREATE VIEW v_resource AS
SELECT r.id, r.identifier, r.environment, r.kind, r.name,
       r.desired_revision, r.desired_hash, r.desired_spec,
       r.applied_revision, r.applied_hash, r.applied_spec,
       r.config_commit, r.sync_status, r.health_status, r.last_result, r.last_error,
       r.failed_revision, r.suspended, r.deleted, r.created_at, r.updated_at
FROM tb_resource AS r;

CREATE VIEW v_deployment AS
SELECT d.id, d.identifier, d.seq,
       r.id AS resource_id, r.identifier AS resource, r.environment, r.kind, r.name,
       d.status, d.from_revision, d.to_revision, d.config_commit, d."trigger", d.strategy,
       d.error, d.output, d.exit_code, d.spec, d.created_at, d.started_at, d.finished_at
FROM tb_deployment AS d
JOIN tb_resource AS r ON r.pk_resource = d.fk_resource;

CREATE VIEW v_deployment_event AS
SELECT e.id, e.identifier, d.id AS deployment_id, d.identifier AS deployment,
       e.seq, e.status, e.message, e.at
FROM tb_deployment_event AS e
JOIN tb_deployment AS d ON d.pk_deployment = e.fk_deployment;

CREATE VIEW v_deployment_step AS
SELECT s.id, s.identifier, d.id AS deployment_id, d.identifier AS deployment,
       s.seq, s.action, s.instance, s.status, s.detail, s.started_at, s.finished_at
FROM tb_deployment_step AS s
JOIN tb_deployment AS d ON d.pk_deployment = s.fk_deployment;

CREATE VIEW v_lock AS
SELECT l.id, l.identifier, l.name, l.owner, l.acquired_at, l.expires_at
FROM tb_lock AS l;

CREATE VIEW v_webhook_delivery AS
SELECT w.id, w.identifier, w.provider, w.delivery_id, w.received_at
FROM tb_webhook_delivery AS w;

-- Each resource with its newest deployment (what `reconciler status` shows).
CREATE VIEW v_resource_status AS
SELECT r.id, r.identifier, r.environment, r.kind, r.name,
       r.desired_revision, r.applied_revision, r.config_commit,
       r.sync_status, r.health_status, r.last_result, r.last_error, r.failed_revision,
       r.suspended, r.deleted, r.updated_at,
       d.identifier  AS last_deployment,
       d.status      AS last_deployment_status,
       d.to_revision AS last_deployment_revision,
       COALESCE(d.finished_at, d.started_at, d.created_at) AS last_deployment_at
FROM tb_resource AS r
LEFT JOIN tb_deployment AS d
       ON d.fk_resource = r.pk_resource
      AND d.seq = (SELECT MAX(d2.seq) FROM tb_deployment AS d2
                   WHERE d2.fk_resource = r.pk_resource);

-- Every deployment with its resource, newest first (what `reconciler history` shows).
CREATE VIEW v_deployment_history AS
SELECT d.id, d.identifier, r.identifier AS resource, r.environment, r.kind, r.name, d.seq,
       d.status, d.from_revision, d.to_revision, d.config_commit, d."trigger", d.strategy,
       d.error, d.exit_code, d.created_at, d.started_at, d.finished_at,
       CAST(ROUND((julianday(d.finished_at) - julianday(d.started_at)) * 86400.0, 6) AS REAL)
           AS duration_seconds
FROM tb_deployment AS d
JOIN tb_resource AS r ON r.pk_resource = d.fk_resource
ORDER BY d.created_at DESC, d.pk_deployment DESC;
