-- Fraisier state schema, MySQL 8 / MariaDB 10.5+ dialect (Trinity pattern, DESIGN "Database").
--
-- Same tables, columns and views as sql/sqlite (001..003 there), with native types: pk_ BIGINT
-- AUTO_INCREMENT, id CHAR(36) UUID text, timestamps DATETIME(6) in UTC (the store sets the
-- session time_zone to +00:00), specs JSON, InnoDB + utf8mb4 with real foreign keys.
-- String columns that are keys are VARCHAR: InnoDB indexes at most 3072 bytes (768 utf8mb4
-- characters). Long free text (output, errors) is LONGTEXT: TEXT stops at 64 KiB.
--
-- MySQL commits every DDL statement implicitly, so a file cannot be applied atomically; see
-- sql/mysql/README.md for what the runner does when a statement fails. `DELIMITER` lines work as
-- in the mysql client (needed for the trigger body). Never edit once released.

CREATE TABLE tb_resource (
    pk_resource      BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id               CHAR(36)     NOT NULL UNIQUE,
    identifier       VARCHAR(768) NOT NULL UNIQUE,
    environment      VARCHAR(255) NOT NULL,
    kind             VARCHAR(255) NOT NULL,
    name             VARCHAR(255) NOT NULL,
    desired_revision VARCHAR(255),
    desired_hash     VARCHAR(255),
    desired_spec     JSON,
    applied_revision VARCHAR(255),
    applied_hash     VARCHAR(255),
    applied_spec     JSON,
    config_commit    VARCHAR(255),
    sync_status      VARCHAR(16)  NOT NULL DEFAULT 'Unknown'
                     CHECK (sync_status IN ('Synced', 'OutOfSync', 'Unknown')),
    health_status    VARCHAR(16)  NOT NULL DEFAULT 'Unknown'
                     CHECK (health_status IN ('Healthy', 'Degraded', 'Progressing', 'Missing',
                                              'Suspended', 'Unknown')),
    last_result      VARCHAR(16)
                     CHECK (last_result IS NULL OR last_result IN
                            ('pending', 'in_progress', 'succeeded', 'failed', 'rolled_back',
                             'rollback_failed', 'cancelled')),
    last_error       LONGTEXT,
    failed_revision  VARCHAR(255),
    suspended        BOOLEAN      NOT NULL DEFAULT FALSE,
    deleted          BOOLEAN      NOT NULL DEFAULT FALSE,
    created_at       DATETIME(6)  NOT NULL,
    updated_at       DATETIME(6)  NOT NULL,
    UNIQUE KEY uq_resource_key (environment, kind, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE tb_deployment (
    pk_deployment BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id            CHAR(36)     NOT NULL UNIQUE,
    identifier    VARCHAR(768) NOT NULL UNIQUE,
    fk_resource   BIGINT       NOT NULL,
    seq           INTEGER      NOT NULL CHECK (seq >= 1),
    status        VARCHAR(16)  NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                    'rolled_back', 'rollback_failed', 'cancelled')),
    from_revision VARCHAR(255),
    to_revision   VARCHAR(255) NOT NULL,
    config_commit VARCHAR(255),
    `trigger`     VARCHAR(64)  NOT NULL,
    strategy      VARCHAR(64)  NOT NULL,
    error         LONGTEXT,
    output        LONGTEXT,
    exit_code     INTEGER,
    spec          JSON,
    created_at    DATETIME(6)  NOT NULL,
    started_at    DATETIME(6),
    finished_at   DATETIME(6),
    UNIQUE KEY uq_deployment_seq (fk_resource, seq),
    CONSTRAINT fk_deployment_resource FOREIGN KEY (fk_resource)
        REFERENCES tb_resource (pk_resource) ON DELETE RESTRICT,
    -- no partial indexes in MySQL: status leads, so crash recovery still reads a narrow range
    KEY ix_deployment_unfinished (status, created_at, seq),
    KEY ix_deployment_created_at (created_at, seq),
    KEY ix_deployment_resource_status (fk_resource, status, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Backstop for reconciler.state.store.TRANSITIONS (same pairs as the SQLite trigger).
DELIMITER //
CREATE TRIGGER tr_deployment_status_transition
BEFORE UPDATE ON tb_deployment
FOR EACH ROW
BEGIN
    IF NEW.status <> OLD.status AND NOT (
           (OLD.status = 'pending'     AND NEW.status IN ('in_progress', 'cancelled', 'failed'))
        OR (OLD.status = 'in_progress' AND NEW.status IN ('succeeded', 'failed', 'rolled_back',
                                                          'rollback_failed', 'cancelled'))
        OR (OLD.status = 'failed'      AND NEW.status IN ('rolled_back', 'rollback_failed'))
    ) THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'illegal deployment status transition';
    END IF;
END//
DELIMITER ;

CREATE TABLE tb_deployment_event (
    pk_deployment_event BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id                  CHAR(36)     NOT NULL UNIQUE,
    identifier          VARCHAR(768) NOT NULL UNIQUE,
    fk_deployment       BIGINT       NOT NULL,
    seq                 INTEGER      NOT NULL CHECK (seq >= 1),
    status              VARCHAR(16)  NOT NULL
                        CHECK (status IN ('pending', 'in_progress', 'succeeded', 'failed',
                                          'rolled_back', 'rollback_failed', 'cancelled')),
    message             LONGTEXT,
    at                  DATETIME(6)  NOT NULL,
    UNIQUE KEY uq_deployment_event_seq (fk_deployment, seq),
    CONSTRAINT fk_deployment_event_deployment FOREIGN KEY (fk_deployment)
        REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE tb_deployment_step (
    pk_deployment_step BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id                 CHAR(36)     NOT NULL UNIQUE,
    identifier         VARCHAR(768) NOT NULL UNIQUE,
    fk_deployment      BIGINT       NOT NULL,
    seq                INTEGER      NOT NULL CHECK (seq >= 1),
    action             VARCHAR(255) NOT NULL,
    instance           VARCHAR(255) NOT NULL,
    status             VARCHAR(16)  NOT NULL DEFAULT 'started'
                       CHECK (status IN ('started', 'succeeded', 'failed', 'interrupted')),
    detail             LONGTEXT,
    started_at         DATETIME(6)  NOT NULL,
    finished_at        DATETIME(6),
    UNIQUE KEY uq_deployment_step_seq (fk_deployment, seq),
    CONSTRAINT fk_deployment_step_deployment FOREIGN KEY (fk_deployment)
        REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Leases: expiry is judged by the database clock (UTC_TIMESTAMP(6)), shared by all replicas.
CREATE TABLE tb_lock (
    pk_lock     BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id          CHAR(36)     NOT NULL UNIQUE,
    identifier  VARCHAR(768) NOT NULL UNIQUE,
    name        VARCHAR(768) NOT NULL UNIQUE,
    owner       VARCHAR(255) NOT NULL,
    acquired_at DATETIME(6)  NOT NULL,
    expires_at  DATETIME(6)  NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE tb_webhook_delivery (
    pk_webhook_delivery BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id                  CHAR(36)     NOT NULL UNIQUE,
    identifier          VARCHAR(768) NOT NULL UNIQUE,
    provider            VARCHAR(64)  NOT NULL,
    delivery_id         VARCHAR(255) NOT NULL,
    received_at         DATETIME(6)  NOT NULL,
    UNIQUE KEY uq_webhook_delivery (provider, delivery_id),
    KEY ix_webhook_delivery_received_at (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

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
       d.status, d.from_revision, d.to_revision, d.config_commit, d.`trigger`, d.strategy,
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
       d.status, d.from_revision, d.to_revision, d.config_commit, d.`trigger`, d.strategy,
       d.error, d.exit_code, d.created_at, d.started_at, d.finished_at,
       TIMESTAMPDIFF(MICROSECOND, d.started_at, d.finished_at) / 1000000.0 AS duration_seconds
FROM tb_deployment AS d
JOIN tb_resource AS r ON r.pk_resource = d.fk_resource
ORDER BY d.created_at DESC, d.pk_deployment DESC;
