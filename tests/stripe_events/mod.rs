//! Stripe Event and Subscription objects shaped like the examples of
//! Stripe's API reference (the fields, their types and nesting), in both
//! API generations: before 2025-03-31 the billing period is on the
//! subscription; from 2025-03-31 (`basil`) it is on each subscription item.
//! Ids are made up; timestamps are Unix seconds, relative to the `created`
//! and period ends the tests pass.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::{json, Value};

pub const DAY: u64 = 86_400;

/// A Stripe Event object (envelope) around `object`.
pub fn event(id: &str, event_type: &str, created: u64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": { "object": object, "previous_attributes": {} },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type
    })
}

/// A price, as embedded in a subscription item.
pub fn price(lookup_key: Option<&str>, product: Value) -> Value {
    json!({
        "id": "price_1MowQULkdIwHu7ixraBm864M",
        "object": "price",
        "active": true,
        "billing_scheme": "per_unit",
        "created": 1_680_000_000,
        "currency": "usd",
        "livemode": false,
        "lookup_key": lookup_key,
        "metadata": {},
        "nickname": null,
        "product": product,
        "recurring": { "interval": "month", "interval_count": 1, "usage_type": "licensed" },
        "type": "recurring",
        "unit_amount": 1000
    })
}

/// A subscription as API versions before 2025-03-31 send it: the billing
/// period on the subscription.
pub fn legacy_subscription(status: &str, period_end: u64, metadata: Value) -> Value {
    json!({
        "id": "sub_1MowQVLkdIwHu7ixeRlqHVzs",
        "object": "subscription",
        "application": null,
        "billing_cycle_anchor": period_end - 30 * DAY,
        "cancel_at": null,
        "cancel_at_period_end": false,
        "canceled_at": null,
        "collection_method": "charge_automatically",
        "created": period_end - 60 * DAY,
        "currency": "usd",
        "current_period_end": period_end,
        "current_period_start": period_end - 30 * DAY,
        "customer": "cus_NffrFeUfNV2Hib",
        "ended_at": null,
        "items": {
            "object": "list",
            "data": [{
                "id": "si_NcLYdDxLHxlFo7",
                "object": "subscription_item",
                "created": period_end - 60 * DAY,
                "metadata": {},
                "price": price(Some("pro_monthly"), json!("prod_NWjs8kKbJWmuuc")),
                "quantity": 1,
                "subscription": "sub_1MowQVLkdIwHu7ixeRlqHVzs"
            }],
            "has_more": false,
            "total_count": 1,
            "url": "/v1/subscription_items?subscription=sub_1MowQVLkdIwHu7ixeRlqHVzs"
        },
        "latest_invoice": "in_1MowQWLkdIwHu7ixuzkSPfKd",
        "livemode": false,
        "metadata": metadata,
        "status": status,
        "trial_end": null,
        "trial_start": null
    })
}

/// A subscription as API versions 2025-03-31 and later send it: no period
/// on the subscription, one per item.
pub fn basil_subscription(status: &str, item_period_ends: &[u64], metadata: Value) -> Value {
    let items: Vec<Value> = item_period_ends
        .iter()
        .enumerate()
        .map(|(index, end)| {
            json!({
                "id": format!("si_basil{index}"),
                "object": "subscription_item",
                "created": end - 60 * DAY,
                "current_period_end": end,
                "current_period_start": end - 30 * DAY,
                "metadata": {},
                "price": price(
                    if index == 0 { Some("team_yearly") } else { None },
                    json!(format!("prod_basil{index}")),
                ),
                "quantity": 1,
                "subscription": "sub_1RbasilLkdIwHu7ix"
            })
        })
        .collect();
    let first_end = item_period_ends.first().copied().unwrap_or(0);
    json!({
        "id": "sub_1RbasilLkdIwHu7ix",
        "object": "subscription",
        "billing_cycle_anchor": first_end - 30 * DAY,
        "billing_mode": { "type": "classic" },
        "cancel_at": null,
        "cancel_at_period_end": false,
        "canceled_at": null,
        "collection_method": "charge_automatically",
        "created": first_end - 60 * DAY,
        "currency": "usd",
        "customer": "cus_Basil0001",
        "ended_at": null,
        "items": {
            "object": "list",
            "data": items,
            "has_more": false,
            "total_count": item_period_ends.len(),
            "url": "/v1/subscription_items?subscription=sub_1RbasilLkdIwHu7ix"
        },
        "livemode": false,
        "metadata": metadata,
        "status": status,
        "trial_end": null,
        "trial_start": null
    })
}
