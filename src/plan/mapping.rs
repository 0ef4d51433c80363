//! The route side of parameter mapping at compile time: a route's own
//! `mapping` table, checked against its integration and route key. The
//! API's table and the merge are `integration::mapping`'s.

use crate::config::raw::RawIntegration;
use crate::config::raw::RawRoute;
use crate::config::ConfigError;
use crate::integration::mapping::{self, Entries};
use crate::route::RouteKey;

/// Parses route `r`'s mapping (`rkey` is its config path). A mapping on a
/// mock route is an error; `$request.path.NAME` must name one of the key's
/// parameters (when the key itself is valid).
pub(super) fn route(
    r: &RawRoute,
    key: Option<&RouteKey>,
    rkey: &str,
    errors: &mut Vec<ConfigError>,
) -> Entries {
    let Some(raw) = r.mapping.as_ref() else {
        return Entries::default();
    };
    if matches!(r.integration, RawIntegration::Mock { .. }) {
        errors.push(ConfigError::new(
            format!("{rkey}.mapping"),
            "parameter mapping applies to http_proxy integrations; this route's integration is a mock",
        ));
        return Entries::default();
    }
    let params: Option<&[String]> = match key {
        Some(RouteKey::Route { params, .. }) => Some(params),
        Some(RouteKey::Default) => Some(&[]),
        None => None,
    };
    mapping::parse(Some(raw), params, &format!("{rkey}.mapping"), errors)
}
