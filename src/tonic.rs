//! tonic glue: the middleware's services keep the
//! [`NamedService`] name of the service they wrap, so
//! `tonic::transport::Server::add_service` takes a layered service. The
//! wiring is explained in [`crate::grpc`].

use ::tonic::server::NamedService;

use crate::session::SessionRefresh;
use crate::subscription::SubscriptionGate;

impl<S: NamedService> NamedService for SessionRefresh<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for SubscriptionGate<S> {
    const NAME: &'static str = S::NAME;
}
