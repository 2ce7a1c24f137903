-- A step a crash left open is closed as 'interrupted' (its outcome is unknown), so the CHECK on
-- tb_deployment_step.status gains that value. SQLite cannot alter a CHECK: the table is rebuilt
-- (https://sqlite.org/lang_altertable.html#otheralter), inside the runner's transaction. Nothing
-- references tb_deployment_step, so foreign keys need no special handling; its view is
-- dropped first and recreated last because a view naming a missing table blocks the rename.

DROP VIEW v_deployment_step;

CREATE TABLE tb_deployment_step_new (
    pk_deployment_step INTEGER PRIMARY KEY,
    id                 TEXT    NOT NULL UNIQUE,
    identifier         TEXT    NOT NULL UNIQUE,        -- "<deployment identifier>/step/<seq>"
    fk_deployment      INTEGER NOT NULL
                       REFERENCES tb_deployment (pk_deployment) ON DELETE CASCADE,
    seq                INTEGER NOT NULL CHECK (seq >= 1),
    action             TEXT    NOT NULL,
    instance           TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'started'
                       CHECK (status IN ('started', 'succeeded', 'failed', 'interrupted')),
    detail             TEXT,
    started_at         TEXT    NOT NULL,
    finished_at        TEXT,
    UNIQUE (fk_deployment, seq)
);

INSERT INTO tb_deployment_step_new
    (pk_deployment_step, id, identifier, fk_deployment, seq, action, instance, status, detail,
     started_at, finished_at)
SELECT pk_deployment_step, id, identifier, fk_deployment, seq, action, instance, status, detail,
       started_at, finished_at
FROM tb_deployment_step;

DROP TABLE tb_deployment_step;

ALTER TABLE tb_deployment_step_new RENAME TO tb_deployment_step;

CREATE VIEW v_deployment_step AS
SELECT s.id, s.identifier, d.id AS deployment_id, d.identifier AS deployment,
       s.seq, s.action, s.instance, s.status, s.detail, s.started_at, s.finished_at
FROM tb_deployment_step AS s
JOIN tb_deployment AS d ON d.pk_deployment = s.fk_deployment;
