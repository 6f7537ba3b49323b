//! Prometheus metrics and security events.
//!
//! Counter names follow ElastiCache's CloudWatch metrics where one exists
//! (`AuthenticationFailures` -> `cachegate_authentication_failures_total`, ...). Labels are the
//! listener and a *configured* user name, never a secret and never a client-chosen string: a
//! name that is not a configured user is counted as `unknown`, so a client cannot grow the label
//! set (or leak a password typed in the user field).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    pub listener: String,
    pub user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub listener: String,
    pub user: String,
    /// Which of the user's passwords (or tokens) matched: "1", "2"; "0" for nopass.
    pub slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub listener: String,
    /// "TLSv1.3", "TLSv1.2" or "plaintext".
    pub tls_version: String,
    /// "true" or "false": with `transit_encryption_mode = "preferred"`, when this reaches zero
    /// for "false", the last plaintext client is gone.
    pub tls: String,
    /// "verified" when the client presented a certificate, else "none".
    pub client_cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlameLabels {
    pub listener: String,
    /// client, upstream or proxy (`error::Source`).
    pub blame: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub listener: String,
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub listener: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub listener: String,
    /// A data key's id.
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub listener: String,
    /// server, client_ca, upstream_ca, upstream_client.
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

type HistogramFamily = Family<CommandLabels, Histogram, fn() -> Histogram>;

/// Every metric cachegate exports, and the recent security events behind ACL LOG.
pub struct Metrics {
    registry: Registry,
    pub auth_failures: Family<UserLabels, Counter>,
    pub command_denied: Family<UserLabels, Counter>,
    pub key_denied: Family<UserLabels, Counter>,
    pub channel_denied: Family<UserLabels, Counter>,
    pub authentications: Family<AuthLabels, Counter>,
    pub auth_throttled: Family<ListenerLabels, Counter>,
    pub connections: Family<ConnLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub commands: Family<CommandLabels, Counter>,
    pub pinned_sessions: Family<ListenerLabels, Gauge>,
    pub command_seconds: HistogramFamily,
    pub unexpected_pushes: Family<ListenerLabels, Counter>,
    pub security_events: Family<ReasonLabels, Counter>,
    pub connections_rejected: Family<ReasonLabels, Counter>,
    pub request_failures: Family<ReasonLabels, Counter>,
    pub session_errors: Family<BlameLabels, Counter>,
    pub cluster_redirects: Family<ReasonLabels, Counter>,
    pub cluster_refreshes: Family<ReasonLabels, Counter>,
    pub encryption_operations: Family<OpLabels, Counter>,
    pub decryption_failures: Family<ReasonLabels, Counter>,
    pub data_key_created: Family<KeyLabels, Gauge>,
    pub data_key_seals: Family<KeyLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_last_reload_success: Gauge,
    pub certificate_expiry: Family<CertLabels, Gauge>,
    events: Mutex<Vec<SecurityEvent>>,
    next_event_id: AtomicU64,
}

/// Records command counts and latencies for one session: each command's metric handles are
/// looked up once, so a request costs no label allocation or registry lock after that.
pub struct CommandMeter<'a> {
    metrics: &'a Metrics,
    listener: &'a str,
    cache: rustc_hash::FxHashMap<&'static str, (Counter, Histogram)>,
    /// The last command observed: pipelines repeat one command, which then needs no lookup.
    last: Option<(&'static str, Counter, Histogram)>,
}

impl CommandMeter<'_> {
    pub fn observe(&mut self, command: &'static str, took: Duration) {
        if let Some((last, count, seconds)) = &self.last {
            if std::ptr::eq(*last, command) {
                count.inc();
                seconds.observe(took.as_secs_f64());
                return;
            }
        }
        let (count, seconds) = self.cache.entry(command).or_insert_with(|| {
            let labels = CommandLabels {
                listener: self.listener.to_string(),
                command: command.to_string(),
            };
            (
                self.metrics.commands.get_or_create(&labels).clone(),
                self.metrics.command_seconds.get_or_create(&labels).clone(),
            )
        });
        count.inc();
        seconds.observe(took.as_secs_f64());
        self.last = Some((command, count.clone(), seconds.clone()));
    }
}

/// Kept events per process, newest first (Redis's acllog-max-len default).
const MAX_EVENTS: usize = 128;

/// One security event, in the shape of a Redis ACL LOG entry.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    pub entry_id: u64,
    pub count: u64,
    /// "auth", "command", "key" or "channel".
    pub reason: &'static str,
    /// "toplevel" or "multi".
    pub context: &'static str,
    /// The command, key or channel refused ("AUTH" for authentication).
    pub object: String,
    pub username: String,
    pub listener: String,
    pub client_info: String,
    pub created: Instant,
    pub updated: Instant,
}

impl SecurityEvent {
    /// The `client-info` of an event, as Redis's ACL LOG shows it, alike for every listener:
    /// `addr=<peer> laddr=cachegate:<listener>`, then `user=` and `resp=` where there is one.
    pub fn client_info(
        peer: impl std::fmt::Display,
        listener: &str,
        user: Option<&str>,
        resp: Option<u8>,
    ) -> String {
        let mut info = format!("addr={peer} laddr=cachegate:{listener}");
        if let Some(user) = user {
            info.push_str(&format!(" user={user}"));
        }
        if let Some(resp) = resp {
            info.push_str(&format!(" resp={resp}"));
        }
        info
    }

    /// A new event, once. The user name is trimmed to 64 printable characters: it may be what
    /// a client typed. The object (a key, a channel, a command: what a client sent) is kept to
    /// its first `MAX_EVENT_OBJECT` bytes, marked `...`: the log keeps 128 events process-wide,
    /// after their clients have gone, and 6 MB keys once made it hold 829 MB (found by a
    /// reviewer; Redis keeps the whole key, counted in its own memory).
    pub fn new(
        reason: &'static str,
        context: &'static str,
        object: String,
        username: &str,
        listener: &str,
        client_info: String,
    ) -> Self {
        let now = Instant::now();
        SecurityEvent {
            entry_id: 0,
            count: 1,
            reason,
            context,
            object: clipped(object),
            username: username
                .chars()
                .take(64)
                .filter(|c| !c.is_control())
                .collect(),
            listener: listener.to_string(),
            client_info,
            created: now,
            updated: now,
        }
    }
}

/// The most of a security event's object that is kept.
pub const MAX_EVENT_OBJECT: usize = 1024;

fn clipped(mut object: String) -> String {
    if object.len() > MAX_EVENT_OBJECT {
        let mut end = MAX_EVENT_OBJECT;
        while !object.is_char_boundary(end) {
            end -= 1;
        }
        object.truncate(end);
        object.push_str("...");
    }
    object
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cachegate");
        let m = Metrics {
            auth_failures: Family::default(),
            command_denied: Family::default(),
            key_denied: Family::default(),
            channel_denied: Family::default(),
            authentications: Family::default(),
            auth_throttled: Family::default(),
            connections: Family::default(),
            handshake_failures: Family::default(),
            commands: Family::default(),
            pinned_sessions: Family::default(),
            unexpected_pushes: Family::default(),
            security_events: Family::default(),
            connections_rejected: Family::default(),
            request_failures: Family::default(),
            session_errors: Family::default(),
            cluster_redirects: Family::default(),
            cluster_refreshes: Family::default(),
            encryption_operations: Family::default(),
            decryption_failures: Family::default(),
            data_key_created: Family::default(),
            data_key_seals: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_success: Gauge::default(),
            certificate_expiry: Family::default(),
            command_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            events: Mutex::new(Vec::new()),
            next_event_id: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "authentication_failures",
            "Failed AUTH / HELLO AUTH attempts (ElastiCache AuthenticationFailures)",
            m.auth_failures.clone(),
        );
        registry.register(
            "command_authorization_failures",
            "Commands refused by a user's ACL (ElastiCache CommandAuthorizationFailures)",
            m.command_denied.clone(),
        );
        registry.register(
            "key_authorization_failures",
            "Commands refused for a key pattern (ElastiCache KeyAuthorizationFailures)",
            m.key_denied.clone(),
        );
        registry.register(
            "channel_authorization_failures",
            "Commands refused for a channel pattern (ElastiCache ChannelAuthorizationFailures)",
            m.channel_denied.clone(),
        );
        registry.register(
            "authentications",
            "Successful authentications by user and password slot (watch slot=\"1\" fall to zero before removing an old password)",
            m.authentications.clone(),
        );
        registry.register(
            "authentication_throttled",
            "Connections closed or delayed for repeated authentication failures",
            m.auth_throttled.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted, by TLS version and client-certificate mode",
            m.connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "commands",
            "Commands forwarded upstream",
            m.commands.clone(),
        );
        registry.register(
            "pinned_sessions",
            "Redis sessions holding a connection of their own (MULTI, pub/sub, blocking, ...)",
            m.pinned_sessions.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time from forwarding a command to its reply",
            m.command_seconds.clone(),
        );
        registry.register(
            "upstream_unexpected_pushes",
            "RESP3 pushes dropped on shared upstream connections, where no client asked for one",
            m.unexpected_pushes.clone(),
        );
        registry.register(
            "security_events",
            "Security events by reason: auth, command, key, channel, cross_protocol",
            m.security_events.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed before any TLS work: not_allowed (source allow-list), untrusted_proxy, proxy_header",
            m.connections_rejected.clone(),
        );
        registry.register(
            "request_failures",
            "Requests answered with an error because no reply came (shared or own connections, Redis and memcached), by cause: unavailable, lost, timeout, malformed (the upstream's), over_budget, shutting_down (cachegate's)",
            m.request_failures.clone(),
        );
        registry.register(
            "session_errors",
            "Client sessions ended by an error, by blame (client, upstream, proxy) and cause: client_io, protocol, partial_request_timeout, query_buffer_full, over_budget, and the upstream causes of request_failures",
            m.session_errors.clone(),
        );
        registry.register(
            "cluster_redirects",
            "Redis Cluster redirections followed, by reason: moved, ask, again (TRYAGAIN, CLUSTERDOWN, a node not reachable), unknown_node (a redirection to a node the slot map does not list, not followed until a refresh lists it)",
            m.cluster_redirects.clone(),
        );
        registry.register(
            "cluster_refreshes",
            "Reads of a Redis Cluster's slot map, by reason: ok, failed",
            m.cluster_refreshes.clone(),
        );
        registry.register(
            "encryption_operations",
            "Values sealed (op=\"seal\") and replies opened (op=\"open\") by at-rest encryption",
            m.encryption_operations.clone(),
        );
        registry.register(
            "decryption_failures",
            "Values in an encrypted keyspace that did not open, by reason: tampered, truncated, unknown_key, plaintext",
            m.decryption_failures.clone(),
        );
        registry.register(
            "data_key_created_timestamp_seconds",
            "When the primary data key of a listener's keyring was made (its age: now minus this)",
            m.data_key_created.clone(),
        );
        registry.register(
            "data_key_seals",
            "Values this process sealed under each data key, across reloads (rotate well before 2^32 across all processes)",
            m.data_key_seals.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /reload, a watched file changed), by result: success, failure",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (the start, or the last successful reload)",
            m.config_last_reload_success.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate in use expires (notAfter), by listener and role: server, client_ca, upstream_ca, upstream_client (the earliest of a bundle)",
            m.certificate_expiry.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `n` requests answered with an error because no reply came, for `cause` (a fixed word,
    /// never anything a client sent).
    pub fn request_failed(&self, listener: &str, cause: &'static str, n: u64) {
        self.request_failures
            .get_or_create(&ReasonLabels {
                listener: listener.to_string(),
                reason: cause.to_string(),
            })
            .inc_by(n);
    }

    /// A client session ended by `error`.
    pub fn session_error(&self, listener: &str, error: &crate::error::SessionError) {
        self.session_errors
            .get_or_create(&BlameLabels {
                listener: listener.to_string(),
                blame: error.source().label().to_string(),
                cause: error.cause().to_string(),
            })
            .inc();
    }

    /// A per-session recorder of command counts and latencies.
    pub fn command_meter<'a>(&'a self, listener: &'a str) -> CommandMeter<'a> {
        CommandMeter {
            metrics: self,
            listener,
            cache: Default::default(),
            last: None,
        }
    }

    /// Records a security event: counted, logged (no secrets), and kept for ACL LOG. Repeats
    /// of the same event update one entry, as Redis's ACL LOG does.
    pub fn security_event(&self, mut event: SecurityEvent, known_user: bool) {
        // A name that is not a configured user may be a password typed in the wrong place: it
        // is never written anywhere, not to the log, not to ACL LOG, not to a metric label.
        if !known_user {
            event.username = "(unknown user)".into();
        }
        self.security_events
            .get_or_create(&ReasonLabels {
                listener: event.listener.clone(),
                reason: event.reason.to_string(),
            })
            .inc();
        let labels = UserLabels {
            listener: event.listener.clone(),
            user: if known_user {
                event.username.clone()
            } else {
                "unknown".into()
            },
        };
        match event.reason {
            "auth" => self.auth_failures.get_or_create(&labels).inc(),
            "command" => self.command_denied.get_or_create(&labels).inc(),
            "key" => self.key_denied.get_or_create(&labels).inc(),
            "channel" => self.channel_denied.get_or_create(&labels).inc(),
            _ => 0,
        };
        tracing::info!(
            listener = %event.listener,
            reason = event.reason,
            context = event.context,
            object = %event.object,
            user = %event.username,
            client = %event.client_info,
            "security event"
        );
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let same = events.iter_mut().find(|e| {
            e.reason == event.reason
                && e.context == event.context
                && e.object == event.object
                && e.username == event.username
                && e.listener == event.listener
        });
        match same {
            Some(e) => {
                e.count += 1;
                e.updated = event.updated;
                e.client_info = event.client_info;
            }
            None => {
                event.entry_id = self
                    .next_event_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                events.insert(0, event);
                events.truncate(MAX_EVENTS);
            }
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.updated));
    }

    /// The newest `count` events of one listener.
    pub fn events(&self, listener: &str, count: usize) -> Vec<SecurityEvent> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .filter(|e| e.listener == listener)
            .take(count)
            .cloned()
            .collect()
    }

    pub fn reset_events(&self, listener: &str) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.retain(|e| e.listener != listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A security event keeps at most `MAX_EVENT_OBJECT` bytes of what the client sent (cut
    /// on a character boundary, marked), so that 128 events of 6 MB keys do not stay in memory.
    #[test]
    fn an_events_object_is_kept_short() {
        let event =
            |object: String| SecurityEvent::new("key", "toplevel", object, "u", "l", String::new());
        assert_eq!(event("app:1".into()).object, "app:1");
        let long = event("k".repeat(6 << 20)).object;
        assert_eq!(long.len(), MAX_EVENT_OBJECT + 3);
        assert!(long.ends_with("k..."));
        let wide = event("é".repeat(MAX_EVENT_OBJECT)).object;
        assert!(
            wide.len() <= MAX_EVENT_OBJECT + 3 && wide.ends_with("é..."),
            "{}",
            wide.len()
        );
    }

    #[test]
    fn client_info_reads_alike_for_every_listener() {
        let peer: std::net::SocketAddr = "10.0.0.7:5000".parse().unwrap();
        assert_eq!(
            SecurityEvent::client_info(peer, "edge", Some("app"), Some(3)),
            "addr=10.0.0.7:5000 laddr=cachegate:edge user=app resp=3"
        );
        assert_eq!(
            SecurityEvent::client_info(peer, "mc", Some("(none)"), None),
            "addr=10.0.0.7:5000 laddr=cachegate:mc user=(none)"
        );
        assert_eq!(
            SecurityEvent::client_info(peer, "edge", None, None),
            "addr=10.0.0.7:5000 laddr=cachegate:edge"
        );
    }

    fn event(object: &str) -> SecurityEvent {
        SecurityEvent::new(
            "key",
            "toplevel",
            object.into(),
            "app",
            "l",
            "addr=127.0.0.1:1".into(),
        )
    }

    #[test]
    fn repeats_update_one_entry_and_counters_show_in_the_exposition() {
        let m = Metrics::new();
        m.security_event(event("k1"), true);
        m.security_event(event("k1"), true);
        m.security_event(event("k2"), true);
        let mut stranger = event("x");
        stranger.username = "not-a-user".into();
        m.security_event(stranger, false);
        let events = m.events("l", 10);
        assert_eq!(events.len(), 3);
        assert_eq!(events.iter().find(|e| e.object == "k1").unwrap().count, 2);
        let text = m.encode();
        assert!(
            text.contains(
                "cachegate_key_authorization_failures_total{listener=\"l\",user=\"app\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("user=\"unknown\"") && !text.contains("not-a-user"),
            "{text}"
        );
        m.reset_events("l");
        assert!(m.events("l", 10).is_empty());
    }

    #[test]
    fn the_command_meter_counts_each_command_under_its_own_label() {
        let m = Metrics::new();
        let mut meter = m.command_meter("l");
        for label in ["get", "get", "set", "get"] {
            meter.observe(label, Duration::from_micros(50));
        }
        let text = m.encode();
        let count = |label: &str| {
            let want = format!("command=\"{label}\"}} ");
            text.lines()
                .find(|l| l.starts_with("cachegate_commands_total") && l.contains(&want))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count("get").as_deref(), Some("3"), "{text}");
        assert_eq!(count("set").as_deref(), Some("1"), "{text}");
    }
}
