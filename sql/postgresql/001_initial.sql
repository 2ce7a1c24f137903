-- Fraisier state schema, PostgreSQL dialect (Trinity pattern, DESIGN "Database").
--
-- Same tables, columns and views as sql/sqlite (001..003 there), with native types:
-- pk_ identity columns, id UUID, timestamps TIMESTAMPTZ (microseconds, UTC), specs JSONB.
-- Applied by reconciler/state/migrations.py in one transaction (PostgreSQL DDL is
-- transactional: a failing file leaves nothing behind). Never edit once released.

CREATE TABLE tb_resource (
    pk_resource      BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               UUID        NOT NULL UNIQUE,
    identifier       TEXT        NOT NULL UNIQUE,          -- "environment/Kind/name"
    environment      TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    name             TEXT        NOT NULL,
    desired_revision TEXT,
    desired_hash     TEXT,
    desired_spec     JSONB,
    applied_revision TEXT,
    applied_hash     TEXT,
    applied_spec     JSONB,
    config_commit    TEXT,
    sync_status      TEXT        NOT NULL DEFAULT 'Unknown'
                     CHECK (sync_status IN ('Synced', 'OutOfSync', 'Unknown')),
    health_status    TEXT        NOT NULL DEFAULT 'Unknown'
                     CHECK (health_status IN ('Healthy', 'Degraded', 'Progressing', 'Missing',
                                              'Suspended', 'Unknown')),
    last_result      TEXT
                     CHECK (last_result IS NULL OR last_result IN
                            ('pending', 'in_progress', 'succeeded', 'failed', 'rolled_back',
                             'rollback_failed', 'cancelled')),
    last_error       TEXT,
    failed_revision  TEXT,
    suspended        BOOLEAN     NOT NULL DEFAULT FALSE,
    deleted          BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (environment, kind, name)
);

CREATE TABLE tb_deployment (
    pk_deployment BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            UUID        NOT NULL UNIQUE,
    identifier    TEXT        NOT NULL UNIQUE,             -- "environment/Kind/name#<seq>"
    fk_resource   BIGINT      NOT NULL REFERENCES tb_resource (pk_resource) ON DELETE RESTRICT,
    seq           INTEGER     NOT NULL CHECK (seq >= 1),
    status        TEXT        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                    'rolled_back', 'rollback_failed', 'cancelled')),
    from_revision TEXT,
    to_revision   TEXT        NOT NULL,
    config_commit TEXT,
    "trigger"     TEXT        NOT NULL,
    strategy      TEXT        NOT NULL,
    error         TEXT,
    output        TEXT,
    exit_code     INTEGER,
    spec          JSONB,
    created_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    UNIQUE (fk_resource, seq)
);

CREATE INDEX ix_deployment_unfinished ON tb_deployment (created_at, seq)
    WHERE status IN ('pending', 'in_progress');
CREATE INDEX ix_deployment_created_at ON tb_deployment (created_at, seq);
CREATE INDEX ix_deployment_resource_status ON tb_deployment (fk_resource, status, seq);

-- Backstop for reconciler.state.store.TRANSITIONS (same pairs as the SQLite trigger).
CREATE FUNCTION fn_deployment_status_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'pending'     AND NEW.status IN ('in_progress', 'cancelled', 'failed'))
        OR (OLD.status = 'in_progress' AND NEW.status IN ('succeeded', 'failed', 'rolled_back',
                                                          'rollback_failed', 'cancelled'))
        OR (OLD.status = 'failed'      AND NEW.status IN ('rolled_back', 'rollback_failed'))
    ) THEN
        RAISE EXCEPTION 'illegal deployment status transition';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER tr_deployment_status_transition
BEFORE UPDATE OF status ON tb_deployment
FOR EACH ROW EXECUTE FUNCTION fn_deployment_status_transition();

CREATE TABLE tb_deployment_event (
    pk_deployment_event BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  UUID        NOT NULL UNIQUE,
    identifier          TEXT        NOT NULL UNIQUE,
    fk_deployment       BIGINT      NOT NULL
                        REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE,
    seq                 INTEGER     NOT NULL CHECK (seq >= 1),
    status              TEXT        NOT NULL
                        CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                          'rolled_back', 'rollback_failed', 'cancelled')),
    message             TEXT,
    at                  TIMESTAMPTZ NOT NULL,
    UNIQUE (fk_deployment, seq)
);

CREATE TABLE tb_deployment_step (
    pk_deployment_step BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 UUID        NOT NULL UNIQUE,
    identifier         TEXT        NOT NULL UNIQUE,
    fk_deployment      BIGINT      NOT NULL
                       REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE,
    seq                INTEGER     NOT NULL CHECK (seq >= 1),
    action             TEXT        NOT NULL,
    instance           TEXT        NOT NULL,
    status             TEXT        NOT NULL DEFAULT 'started'
                       CHECK (status IN ('started', 'succeeded', 'failed', 'interrupted')),
    detail             TEXT,
    started_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ,
    UNIQUE (fk_deployment, seq)
);

-- Leases: expiry is judged by the database clock (clock_timestamp()), the one clock all
-- replicas share. identifier = name; only identifier carries the UNIQUE constraint so that the
-- lease upsert's ON CONFLICT (identifier) is the one unique check two racing takers can hit.
CREATE TABLE tb_lock (
    pk_lock     BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          UUID        NOT NULL UNIQUE,
    identifier  TEXT        NOT NULL UNIQUE,
    name        TEXT        NOT NULL CHECK (name = identifier),
    owner       TEXT        NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE tb_webhook_delivery (
    pk_webhook_delivery BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  UUID        NOT NULL UNIQUE,
    identifier          TEXT        NOT NULL UNIQUE,
    provider            TEXT        NOT NULL,
    delivery_id         TEXT        NOT NULL,
    received_at         TIMESTAMPTZ NOT NULL,
    UNIQUE (provider, delivery_id)
);

CREATE INDEX ix_webhook_delivery_received_at ON tb_webhook_delivery (received_at);

-- Read views (plain CREATE VIEW: the tracking table says what exists) ---------------------------

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

CREATE VIEW v_deployment_history AS
SELECT d.id, d.identifier, r.identifier AS resource, r.environment, r.kind, r.name, d.seq,
       d.status, d.from_revision, d.to_revision, d.config_commit, d."trigger", d.strategy,
       d.error, d.exit_code, d.created_at, d.started_at, d.finished_at,
       CAST(EXTRACT(EPOCH FROM (d.finished_at - d.started_at)) AS DOUBLE PRECISION)
           AS duration_seconds
FROM tb_deployment AS d
JOIN tb_resource AS r ON r.pk_resource = d.fk_resource
ORDER BY d.created_at DESC, d.pk_deployment DESC;
