-- tower-saas-guard subscriptions (PostgreSQL).
--
-- One row per (organization, subscription); the primary key also serves
-- "subscriptions of an organization". `status` is one of Stripe's
-- subscription statuses (`active`, `trialing`, `past_due`, ...); period and
-- trial ends are Unix milliseconds.
CREATE TABLE IF NOT EXISTS tower_saas_guard_subscriptions (
    organization_id    TEXT   NOT NULL,
    subscription_id    TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    plan               TEXT   NOT NULL,
    current_period_end BIGINT,
    trial_end          BIGINT,
    PRIMARY KEY (organization_id, subscription_id)
);
