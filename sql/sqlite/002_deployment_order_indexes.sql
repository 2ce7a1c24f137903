-- Indexes that match how deployments are read: newest first across resources
-- (ORDER BY created_at DESC, seq DESC) and unfinished ones oldest first after a crash.
DROP INDEX ix_deployment_created_at;
CREATE INDEX ix_deployment_created_at ON tb_deployment (created_at, seq);

DROP INDEX ix_deployment_unfinished;
CREATE INDEX ix_deployment_unfinished ON tb_deployment (created_at, seq)
    WHERE status IN ('pending', 'in_progress');
