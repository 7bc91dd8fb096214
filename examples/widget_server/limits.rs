//! Rate limits (SPEC §5): creating contact sessions per client address,
//! writes per session (conversations, messages) and per organization
//! (operator replies, drafts, files, settings), each a token bucket
//! (`governor`, GCRA) of `--rate-burst` requests refilled at
//! `--rate-per-second`. Beyond it: 429 `rate_limited` with `Retry-After`.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tower_saas_guard::session::SessionId;

use super::problem::ApiError;

/// How often buckets that are full again (idle clients) are forgotten, so
/// the limiters' memory follows the active clients, not every client ever.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The three kinds of bucket.
pub(crate) struct Limits {
    contact_sessions: DefaultKeyedRateLimiter<IpAddr>,
    session_writes: DefaultKeyedRateLimiter<SessionId>,
    organization_writes: DefaultKeyedRateLimiter<String>,
}

impl Limits {
    /// Buckets of `burst` requests refilled at `per_second`; a background
    /// task forgets idle buckets for as long as the limits live.
    pub(crate) fn start(burst: NonZeroU32, per_second: NonZeroU32) -> Arc<Self> {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let limits = Arc::new(Self {
            contact_sessions: DefaultKeyedRateLimiter::keyed(quota),
            session_writes: DefaultKeyedRateLimiter::keyed(quota),
            organization_writes: DefaultKeyedRateLimiter::keyed(quota),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(forget_idle(Arc::downgrade(&limits)));
        }
        limits
    }

    /// One `POST /contact-sessions` from `client` (an IPv6 client by its
    /// /64 network: see [`client_network`]).
    pub(crate) fn contact_session(&self, client: IpAddr) -> Result<(), ApiError> {
        check(&self.contact_sessions, &client_network(client))
    }

    /// One write by the session `id`.
    pub(crate) fn session_write(&self, id: SessionId) -> Result<(), ApiError> {
        check(&self.session_writes, &id)
    }

    /// One write for the organization `organization_id`.
    pub(crate) fn organization_write(&self, organization_id: &str) -> Result<(), ApiError> {
        check(&self.organization_writes, &organization_id.to_owned())
    }

    fn forget_idle(&self) {
        self.contact_sessions.retain_recent();
        self.session_writes.retain_recent();
        self.organization_writes.retain_recent();
        self.contact_sessions.shrink_to_fit();
        self.session_writes.shrink_to_fit();
        self.organization_writes.shrink_to_fit();
    }
}

fn check<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::rate_limited(wait)
    })
}

/// The bucket of a client address: an IPv4 address as it is; an IPv6
/// address by its /64 network, which one subscriber usually holds whole
/// (rotating through it would otherwise give a client a fresh bucket per
/// request); an IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn client_network(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

async fn forget_idle(limits: Weak<Limits>) {
    loop {
        tokio::time::sleep(FORGET_IDLE_EVERY).await;
        match limits.upgrade() {
            Some(limits) => limits.forget_idle(),
            None => return,
        }
    }
}

/// The client's address, when the server was started with connection info
/// (`into_make_service_with_connect_info`); requests without it share one
/// bucket.
pub(crate) struct ClientAddr(pub(crate) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| addr.ip());
        Ok(Self(ip))
    }
}
