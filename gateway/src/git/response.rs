//! The response every git answer shares: its content type, no caching by proxies, and a
//! metered body (see [`crate::body`]).

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};

use crate::body::{metered, BodyStream, OfLength};
use crate::error::BoxError;
use crate::limits::Slot;

/// A node's stream as a response body stream.
pub fn boxed(stream: gitgate_storage_client::GitStream) -> BodyStream {
    Box::pin(stream.map_err(|e| Box::new(e) as BoxError))
}

/// Keep `slot` (the fetch's concurrency slots) until the body is done with.
pub fn holding(stream: BodyStream, slot: Slot) -> BodyStream {
    Box::pin(stream.map(move |item| {
        let _held_until_the_body_ends = &slot;
        item
    }))
}

/// A git response: `content_type`, not cacheable, streaming `stream`. `generated` says
/// whether a node produced these bytes for this request (for `bytes_generated`).
pub fn git_response(stream: BodyStream, content_type: &'static str, generated: bool) -> Response {
    git_response_of_len(stream, content_type, generated, None)
}

/// [`git_response`] with the body's length when it is known, sent as
/// `Content-Length` (hyper aborts the connection if the stream ends short of it).
pub fn git_response_of_len(
    stream: BodyStream,
    content_type: &'static str,
    generated: bool,
    len: Option<u64>,
) -> Response {
    let body = Body::from_stream(metered(stream, generated));
    let body = match len {
        Some(len) => Body::new(OfLength::new(body, len)),
        None => body,
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        body,
    )
        .into_response()
}
