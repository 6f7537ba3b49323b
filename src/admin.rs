//! The admin HTTP listener (loopback by default): `/live`, `/ready`, `/metrics`.
//!
//! `/live` answers 200 while the process serves; `/ready` answers 200 once the listeners are
//! bound (they are, before this runs) and at least one upstream answers, and no listener
//! serves an expired certificate, 503 otherwise; `/metrics` is the Prometheus text
//! exposition; `POST /reload` reloads the configuration (only on a loopback admin listener)
//! and answers 200 with what was loaded, or 409 with every problem.

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
    /// Cluster listeners' clusters: ready while their layout was last read.
    pub clusters: Vec<Arc<crate::upstream::cluster::Cluster>>,
    pub reloader: Arc<crate::reload::Reloader>,
    /// The admin listener is bound to loopback: `POST /reload` is served there only, and
    /// requests must name localhost or an address (see [`host_allowed`]).
    pub reload_allowed: bool,
    /// One `POST /reload` at a time: held by the reload itself (its blocking thread goes on
    /// when the client hangs up), so that a burst queues no more of them.
    pub reloading: Arc<tokio::sync::Semaphore>,
}

/// Admin connections open at once; more are closed as they arrive (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 64;
/// Admin connections one source (an IPv4 address, an IPv6 /64) holds at once: one client that
/// opens connections cannot take every place and leave the orchestrator's `/live` probe, from
/// another address, refused until it restarts the process.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = MAX_CONNECTIONS / 4;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one admin connection may stay open at all (keep-alive included).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves until `shutdown`. Connections are bounded in number (all told and per source), in
/// how long their headers may take and in how long they last: the admin port may face a
/// scraper's network, and a client that opens connections and sends nothing must neither use
/// up the process's file descriptors nor every place.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(
        crate::listener::PerSource::new(MAX_CONNECTIONS_PER_SOURCE).expect("a non-zero cap"),
    );
    loop {
        let (tcp, peer) = tokio::select! {
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let Some(place) = per_source.enter_owned(peer.ip()) else {
            tracing::debug!(
                "admin connection refused: its source holds {MAX_CONNECTIONS_PER_SOURCE} already"
            );
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let (_permit, _place) = (permit, place);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    if admin.reload_allowed && !host_allowed(&req) {
                        return Ok::<_, Infallible>(reply(
                            StatusCode::MISDIRECTED_REQUEST,
                            "text/plain",
                            "this admin listener answers requests for localhost or an IP address only\n".into(),
                        ));
                    }
                    if req.method() == Method::POST && req.uri().path() == "/reload" {
                        // A browser on this host can POST to loopback: a page's request carries
                        // an Origin, and is refused; curl and `cachegate reload` send none.
                        if req.headers().contains_key(hyper::header::ORIGIN) {
                            return Ok::<_, Infallible>(reply(
                                StatusCode::FORBIDDEN,
                                "text/plain",
                                "POST /reload does not take requests from web pages\n".into(),
                            ));
                        }
                        return Ok::<_, Infallible>(reload(admin).await);
                    }
                    Ok::<_, Infallible>(respond(&admin, req))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

/// Whether a request to the loopback admin listener names it as loopback is named: `localhost`
/// or an IP address (any port), or no `Host` at all (HTTP/1.0). A web page that rebinds its own
/// DNS name to 127.0.0.1 sends that name, and so cannot read `/metrics` from the browser.
fn host_allowed(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(hyper::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // `[::1]:9180`, `127.0.0.1:9180`, `localhost`, `LOCALHOST:9180`.
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(addr, port)| {
                addr.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty() || port.starts_with(':'))
            })
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// `POST /reload`: the reload runs on a blocking thread (it reads files and builds TLS
/// configurations); its outcome is the answer.
async fn reload(admin: Arc<Admin>) -> Response<Full<Bytes>> {
    if !admin.reload_allowed {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "POST /reload is served on a loopback admin listener only; send SIGHUP instead\n"
                .into(),
        );
    }
    let Ok(running) = admin.reloading.clone().try_acquire_owned() else {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            "a reload is running; send this one again once it has answered\n".into(),
        );
    };
    let reloader = admin.reloader.clone();
    let run = move || {
        let _running = running;
        reloader.reload("POST /reload")
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(summary)) => reply(
            StatusCode::OK,
            "text/plain",
            format!("reloaded: {summary}\n"),
        ),
        Ok(Err(e)) => reply(StatusCode::CONFLICT, "text/plain", format!("{e}\n")),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reload failed: {e}\n"),
        ),
    }
}

fn respond(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET, or POST /reload\n".into(),
        );
    }
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            let expired = admin
                .reloader
                .expired_server_certs(crate::deadline::unix_now());
            if !expired.is_empty() {
                let names: Vec<&str> = expired.iter().map(|c| c.listener.as_str()).collect();
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "not ready: the certificate of listener {} has expired\n",
                        names.join(", ")
                    ),
                );
            }
            let healthy = admin.pools.iter().filter(|p| p.is_healthy()).count()
                + admin.clusters.iter().filter(|c| c.is_healthy()).count();
            if healthy > 0 {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "ready: {healthy} of {} upstreams reachable\n",
                        admin.pools.len() + admin.clusters.len()
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
            "not found: /live /ready /metrics, POST /reload\n".into(),
        ),
    }
}
