-- When the health of a resource was last observed (a health gate passed, the daemon's drift
-- check, `status --live`), so `status` says how fresh its health is. NULL: never observed.
-- The view gains it as its last column (CREATE OR REPLACE VIEW may only append columns).

ALTER TABLE tb_resource ADD COLUMN health_observed_at TIMESTAMPTZ;

CREATE OR REPLACE VIEW v_resource AS
SELECT r.id, r.identifier, r.environment, r.kind, r.name,
       r.desired_revision, r.desired_hash, r.desired_spec,
       r.applied_revision, r.applied_hash, r.applied_spec,
       r.config_commit, r.sync_status, r.health_status, r.last_result, r.last_error,
       r.failed_revision, r.suspended, r.deleted, r.created_at, r.updated_at,
       r.health_observed_at
FROM tb_resource AS r;
