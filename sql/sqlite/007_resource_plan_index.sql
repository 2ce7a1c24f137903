-- What a plan reads of every resource (Store.plan_listing, `reconciler diff`), in the order it
-- reads it, without reading the rows themselves: a row holds the desired and applied documents,
-- so a scan of tb_resource reads ~1.2 kB per resource for ~100 bytes of these columns.
CREATE INDEX ix_resource_plan ON tb_resource
    (environment, kind, name, deleted, id, applied_revision, failed_revision, last_result,
     suspended);
