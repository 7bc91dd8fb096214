-- tower-saas-guard sessions (PostgreSQL).
--
-- A session is keyed by the SHA-256 of its token (32 bytes); the token
-- itself is never stored. Times are Unix milliseconds. `payload` is the
-- application's JSON payload, as text (exactly as serialized; cast it with
-- `payload::jsonb` to query it).
CREATE TABLE IF NOT EXISTS tower_saas_guard_sessions (
    id              BYTEA  NOT NULL PRIMARY KEY,
    organization_id TEXT,
    subject         TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    payload         TEXT   NOT NULL
);

-- "Sessions of an organization" / "of a subject", in listing order
-- (created_at, id), and bulk revocation of either.
CREATE INDEX IF NOT EXISTS tower_saas_guard_sessions_organization
    ON tower_saas_guard_sessions (organization_id, created_at, id);
CREATE INDEX IF NOT EXISTS tower_saas_guard_sessions_subject
    ON tower_saas_guard_sessions (subject, created_at, id);

-- The purge of expired sessions.
CREATE INDEX IF NOT EXISTS tower_saas_guard_sessions_expires_at
    ON tower_saas_guard_sessions (expires_at);
