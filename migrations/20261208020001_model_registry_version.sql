-- The model registry's version: one row, moved on by every reload an api applies (an admin's
-- reload, a `model.updated` event) in the transaction that announces it
-- (`NOTIFY models_reload, '<version>'`). Every api and worker listens; one that was between
-- connections when a notice came reads the version when it listens again and reloads if it
-- moved, so a missed notice is never a registry left behind (`llm_shared::registry_reloads`).
--
-- Safe while the previous release runs: a new table it does not read; its reloads still
-- notify (with an empty payload), which the new release's listeners take as a reload.
CREATE TABLE model_registry_version (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    version BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
INSERT INTO model_registry_version (one, version) VALUES (true, 0);
