-- tower-saas-guard monotonic, idempotent subscription changes (PostgreSQL).
--
-- `tower_saas_guard_subscription_event_times` holds, per (organization,
-- subscription), the provider's time (Unix milliseconds) of the last change
-- applied to it; an older change is not applied. It is a table of its own,
-- not a column of `tower_saas_guard_subscriptions`, so that this file can
-- run again on an existing schema (SQLite cannot add a column only if it is
-- missing). `tower_saas_guard_subscription_events` holds the provider event
-- ids already applied (unique at the provider) with when they were applied
-- (Unix milliseconds), purged after a retention.
CREATE TABLE IF NOT EXISTS tower_saas_guard_subscription_event_times (
    organization_id TEXT    NOT NULL,
    subscription_id TEXT    NOT NULL,
    event_at        BIGINT  NOT NULL,
    PRIMARY KEY (organization_id, subscription_id)
);

CREATE TABLE IF NOT EXISTS tower_saas_guard_subscription_events (
    event_id   TEXT    NOT NULL PRIMARY KEY,
    applied_at BIGINT  NOT NULL
);

CREATE INDEX IF NOT EXISTS tower_saas_guard_subscription_events_applied_at
    ON tower_saas_guard_subscription_events (applied_at);
