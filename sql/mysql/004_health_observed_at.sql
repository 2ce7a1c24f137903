-- When the health of a resource was last observed (a health gate passed, the daemon's drift
-- check, `status --live`), so `status` says how fresh its health is. NULL: never observed.
-- One ALTER per file (sql/mysql/README.md); 005 shows it in v_resource.
ALTER TABLE tb_resource ADD COLUMN health_observed_at DATETIME(6) NULL;
