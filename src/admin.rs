//! The admin HTTP listener (loopback by default): `/live`, `/ready`, `/metrics`.
//!
//! `/live` answers 200 while the process serves; `/ready` answers 200 once the listeners are
//! bound (they are, before this runs) and at least one upstream answers, 503 otherwise;
//! `/metrics` is the Prometheus text exposition.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::upstream::Pool;

/// What the admin endpoints look at.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub pools: Vec<Pool>,
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(respond(&admin, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn respond(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            let healthy = admin.pools.iter().filter(|p| p.is_healthy()).count();
            if healthy > 0 {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "ready: {healthy} of {} upstreams reachable\n",
                        admin.pools.len()
                    ),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no upstream reachable\n".into(),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            admin.metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /live /ready /metrics\n".into(),
        ),
    }
}
