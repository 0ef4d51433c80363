//! Integrations: the last step of a request's journey, where it is answered.
//! [`http_proxy`] forwards it to an upstream chosen by [`upstream`];
//! [`mock`] answers with a response fixed in the config; [`mapping`] changes
//! a proxied request and its response (parameter mapping). [`client`] is the
//! HTTP/1 client side they share with the request authorizer's call.
//! [`websocket`] is a WebSocket API's routes, integrations and route
//! selection expression.

pub mod client;
pub mod http_proxy;
pub mod mapping;
pub mod mock;
pub mod upstream;
pub mod websocket;
