//! One log line and one set of metrics per request, written when the response body
//! has ended (or broke, or the client went away), so the line carries the status, the
//! duration until the last byte, and the bytes sent. A body whose last bytes are file
//! ranges the connection sends itself (`zero_copy`) ends for hyper before they leave:
//! its line waits until `sendfile` has sent them, or the connection closes short of
//! them (then it says `client_gone` and counts what was sent).
//!
//! The line is emitted inside the request's span, which holds the request id,
//! repository, service, protocol, user, cache outcome and key.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::git::GitRequest;
use crate::metrics::GatewayMetrics;
use crate::progress::ConnProgress;
use crate::state::AppState;

/// Log and count the request once its response is over.
pub async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (service, protocol) = req
        .extensions()
        .get::<GitRequest>()
        .map_or(("other", "v0"), |g| {
            (g.service_label(), g.version().label())
        });
    let progress = req.extensions().get::<Arc<ConnProgress>>().cloned();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let logged = LoggedBody {
        inner: body,
        report: Some(Report {
            bytes: 0,
            placeholder_bytes: 0,
            started,
            status,
            service,
            protocol,
            metrics: state.metrics.clone(),
            span: tracing::Span::current(),
        }),
        file_start: None,
        progress,
    };
    if let Some(p) = &logged.progress {
        p.start();
    }
    Response::from_parts(parts, Body::new(logged))
}

/// A response body that reports itself when it is over.
struct LoggedBody {
    inner: Body,
    /// What the line and the metrics will say; taken when reported.
    report: Option<Report>,
    /// The connection's queued file-byte count before this body's first file range.
    file_start: Option<u64>,
    /// The connection's progress tracker (absent when served without the server loop).
    progress: Option<Arc<ConnProgress>>,
}

/// One request's line and metrics, filled in as its body goes out.
struct Report {
    /// Body bytes handed to hyper, file-range placeholders aside.
    bytes: u64,
    /// Bytes of file-range placeholders handed to hyper (sent by the connection itself).
    placeholder_bytes: u64,
    started: Instant,
    status: u16,
    service: &'static str,
    protocol: &'static str,
    metrics: GatewayMetrics,
    span: tracing::Span,
}

impl LoggedBody {
    fn finish(&mut self, outcome: Outcome) {
        let Some(report) = self.report.take() else {
            return;
        };
        if let Some(p) = &self.progress {
            p.end();
        }
        let (Some(p), Some(start)) = (&self.progress, self.file_start) else {
            let all = report.placeholder_bytes;
            return report.emit(outcome, all);
        };
        // File ranges count what actually reached the socket, and the request is over
        // only when its last range is out: `sendfile` may still be sending it (one
        // response at a time per HTTP/1.1 connection, so this body's ranges are the
        // connection's from `start`).
        let queued = report.placeholder_bytes;
        let sent_of = move |sent: u64| sent.saturating_sub(start).min(queued);
        match outcome {
            Outcome::Complete => p.after_file_bytes(start + queued, move |sent| {
                let sent = sent_of(sent);
                let outcome = if sent == queued {
                    Outcome::Complete
                } else {
                    Outcome::ClientGone
                };
                report.emit(outcome, sent);
            }),
            Outcome::Aborted | Outcome::ClientGone => report.emit(outcome, sent_of(p.file_bytes())),
        }
    }
}

/// How a response ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every byte reached the socket.
    Complete,
    /// The body failed (the connection is aborted, never ended cleanly).
    Aborted,
    /// The client went away first.
    ClientGone,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Aborted => "aborted",
            Self::ClientGone => "client_gone",
        }
    }
}

impl Report {
    fn emit(self, outcome: Outcome, file_bytes: u64) {
        let elapsed = self.started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[self.service, self.protocol, &self.status.to_string()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[self.service])
            .observe(elapsed.as_secs_f64());
        let (status, bytes) = (self.status, self.bytes + file_bytes);
        let duration_ms = elapsed.as_millis() as u64;
        let complete = outcome == Outcome::Complete;
        let outcome = outcome.label();
        self.span.in_scope(|| {
            if status >= 500 || !complete {
                tracing::warn!(
                    status,
                    duration_ms,
                    bytes_sent = bytes,
                    outcome,
                    "request finished"
                );
            } else {
                tracing::info!(
                    status,
                    duration_ms,
                    bytes_sent = bytes,
                    outcome,
                    "request finished"
                );
            }
        });
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(report)) = (frame.data_ref(), &mut this.report) {
                    let n = data.len() as u64;
                    if crate::zero_copy::is_placeholder(data) {
                        report.placeholder_bytes += n;
                        if let Some(p) = &this.progress {
                            let queued = p.queued_file_bytes(n);
                            this.file_start.get_or_insert(queued - n);
                        }
                    } else {
                        report.bytes += n;
                    }
                }
                if let Some(p) = &this.progress {
                    p.progress();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(Outcome::Aborted);
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish(Outcome::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(p) = &this.progress {
                    p.waiting_on_source();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Bodies that end without a final poll (empty ones) count as complete.
        let outcome = if self.inner.is_end_stream() {
            Outcome::Complete
        } else {
            Outcome::ClientGone
        };
        self.finish(outcome);
    }
}
