//! The request path in one place: every route and every layer.

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::{header, Request};
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use crate::{admin, git, ops};

/// Build the gateway's router.
///
/// The global stack runs top to bottom (outermost first).
pub fn app(
    state: Arc<AppState>,
    body_idle_timeout: std::time::Duration,
    pace: crate::body_pace::Pace,
    proxies: Arc<crate::client_addr::TrustedProxies>,
) -> Router {
    // Git requests are authorized before the handler runs: before any cache lookup or
    // node call, on every request. Operational endpoints stay outside auth.
    let git_routes = git::handle.layer(middleware::from_fn_with_state(
        state.clone(),
        crate::auth::layer::require,
    ));
    let stack = ServiceBuilder::new()
        // Take the client's X-Request-Id or make one, before anything logs.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Keep credentials out of every log below this point.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        // Parse the path, Git-Protocol and request id once, into a GitRequest that the
        // span, the access log, auth and the handlers read.
        .layer(middleware::from_fn_with_state(proxies, git::request::parse))
        // One span per request; handlers record repo/service/protocol into it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(())
                .on_failure(()),
        )
        // One summary line and the request metrics, once the body is over.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::access_log::record,
        ))
        // Echo the request id so clients and proxies can quote it.
        .layer(PropagateRequestIdLayer::x_request_id())
        // A body that trickles (under body_min_rate) or outlasts body_deadline fails, so
        // it cannot hold a push's repository lock; its bytes are counted here, before
        // inflation, for the gzip ratio limit (a plain `Body` still here: the layers
        // below change the body type).
        .layer(middleware::from_fn_with_state(
            pace,
            crate::body_pace::enforce,
        ))
        // A request body that stalls longer than this between chunks fails (slowloris).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_idle_timeout,
        ))
        // git gzips large fetch bodies; inflate them as a stream.
        .layer(RequestDecompressionLayer::new());
    Router::new()
        .route("/-/health", get(ops::health))
        .route("/-/ready", get(ops::ready))
        .route("/-/metrics", get(ops::metrics))
        .route("/-/admin/repos", axum::routing::delete(admin::delete_repo))
        // Fetches forwarded by the fleet's other gateways: a fleet token, not client
        // auth (see `peers`).
        .route(
            "/-/peer/{*rest}",
            axum::routing::post(crate::peers::endpoint::serve).get(crate::peers::endpoint::serve),
        )
        // Everything else is a smart-HTTP path (or a 404).
        .fallback(git_routes)
        .with_state(state)
        .layer(stack)
}

fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .extensions()
        .get::<git::GitRequest>()
        .map_or("-", |g| g.request_id.as_str());
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id,
        repo = tracing::field::Empty,
        service = tracing::field::Empty,
        protocol = tracing::field::Empty,
        user = tracing::field::Empty,
        cache = tracing::field::Empty,
        key = tracing::field::Empty,
        node = tracing::field::Empty,
        peer = tracing::field::Empty,
        bytes_generated = tracing::field::Empty,
    )
}
