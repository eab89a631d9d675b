-- Secret references name a file under the deployment's secrets directory (`file:NAME`, a name or a
-- relative path; `[secrets] dir`), or an environment variable with its prefix (`env:NAME`). Where a
-- reference may point is the deployment's policy, checked by the services; the column only keeps
-- the two forms and no control character.
ALTER TABLE integrations DROP CONSTRAINT IF EXISTS integrations_webhook_secret_ref_check;
ALTER TABLE integrations ADD CONSTRAINT integrations_webhook_secret_ref_check
    CHECK (webhook_secret_ref IS NULL OR webhook_secret_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:[^[:cntrl:]]+)$');
