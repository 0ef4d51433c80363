//! Integrations: the last step of a request's journey, where it is answered.
//! [`http_proxy`] forwards it to an upstream chosen by [`upstream`]; a mock
//! integration's answer is pre-rendered in the plan and written by the
//! pipeline.

pub mod http_proxy;
pub mod upstream;
