//! The serde mirror of the TOML file: every field optional where the file may omit it, no
//! validation here. Unknown keys are collected by `serde_ignored` in `config::load` rather than
//! by `deny_unknown_fields`, so that a file with several stray keys reports all of them at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// Where generated development material (dev CA, server certificate) is kept.
    pub data_dir: Option<PathBuf>,
    /// How many threads serve clients; default: the CPUs the process may use.
    pub threads: Option<u64>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub shutdown: ShutdownFile,
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub reload: ReloadFile,
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// Redis ACL users, each with an `ACL SETUSER` rule string.
    #[serde(default)]
    pub users: Vec<UserFile>,
    /// Named lists of users; a listener with `auth.mode = "acl"` names the group it accepts.
    #[serde(default)]
    pub user_groups: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Default, Deserialize)]
pub struct UserFile {
    pub name: Option<String>,
    pub acl: Option<String>,
    /// Only a client certificate mapped to this user logs it in; a password alone is refused.
    pub cert_required: Option<bool>,
    /// A file holding one more password for this user (`/run/secrets/...`).
    pub password_file: Option<PathBuf>,
}

// Rule strings may hold `>password`: never print them.
impl std::fmt::Debug for UserFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `[reload]`: how the configuration is re-read while serving.
#[derive(Debug, Default, Deserialize)]
pub struct ReloadFile {
    /// How often the config file and every file it names are checked for changes; "0s": never
    /// (SIGHUP and POST /reload still reload).
    #[serde(default, with = "humantime_serde")]
    pub watch_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LimitsFile {
    pub max_bulk_bytes: Option<u64>,
    pub max_multibulk_len: Option<u64>,
    pub max_inline_bytes: Option<u64>,
    pub max_reply_bytes: Option<u64>,
    pub max_request_bytes: Option<u64>,
    /// All clients' buffered requests and queued replies together.
    pub max_buffered_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub partial_request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub login_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AdminFile {
    pub bind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ShutdownFile {
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub bind: Option<String>,
    pub max_connections: Option<u64>,
    /// Connections one source (an IPv4 address, an IPv6 /64) may hold; no cap when absent.
    pub max_connections_per_source: Option<u64>,
    /// Source addresses (CIDR) that may connect; everyone when absent.
    pub allow: Option<Vec<String>>,
    /// PROXY protocol v1/v2 headers, accepted only from these load balancers.
    pub proxy_protocol: Option<ProxyProtocolFile>,
    #[serde(default)]
    pub tls: ServerTlsFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub commands: CommandsFile,
    pub upstream: Option<UpstreamFile>,
    /// Only for `protocol = "memcached"`.
    pub memcached: Option<MemcachedFile>,
    /// Values sealed before they reach the backend.
    pub encryption: Option<EncryptionFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionFile {
    /// 32 bytes (64 hex digits, base64 or raw) that wrap the data keys.
    pub root_key_file: Option<PathBuf>,
    /// Or: the environment variable that holds it.
    pub root_key_env: Option<String>,
    /// Or: a command that prints it (the hook for a KMS, Vault or an HSM: it unwraps the root
    /// key there and prints it; run at every start and reload, 10 s at most).
    pub root_key_command: Option<Vec<String>>,
    #[serde(default)]
    pub keyspaces: Vec<KeyspaceFile>,
    /// "error" (default) or "pass": what a value without the sealed header gets.
    pub on_plaintext: Option<String>,
    /// Values one data key seals before cachegate rotates to a new one (default 2^30).
    pub rotate_after_seals: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceFile {
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Value types encrypted: "string" (the only one so far).
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolFile {
    #[serde(default)]
    pub trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct MemcachedFile {
    pub max_value_bytes: Option<u64>,
    pub max_line_bytes: Option<u64>,
    pub max_keys: Option<u64>,
    pub on_node_down: Option<String>,
    pub eject_after: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub eject_for: Option<Duration>,
    pub meta_gets: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ServerTlsFile {
    pub enabled: Option<bool>,
    /// "required" (the default) or "preferred": TLS and plaintext on one port.
    pub transit_encryption_mode: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub min_version: Option<String>,
    pub client_auth: Option<String>,
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs of the client CAs: revoked client certificates are refused.
    pub client_crl: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    pub session_resumption: Option<bool>,
}

#[derive(Default, Deserialize)]
pub struct AuthFile {
    pub mode: Option<String>,
    /// ACL mode: every user gets a backend user with the same rules, which their scripts run
    /// as (so Redis itself enforces the user's key patterns inside scripts).
    pub backend_users: Option<bool>,
    #[serde(default)]
    pub tokens: Vec<String>,
    /// A file with the tokens, one a line (added to `tokens`).
    pub tokens_file: Option<PathBuf>,
    /// With `mode = "acl"`: the user group whose users may log in here.
    pub user_group: Option<String>,
    /// Failed AUTHs after which a connection is closed (0: never).
    pub max_failures: Option<u32>,
    /// Failures from one source address before its attempts are slowed down.
    pub backoff_after: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// Verified client certificates that log in as a user: one of cn / dns / uri, and user.
    #[serde(default)]
    pub certificate_users: Vec<CertUserFile>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CertUserFile {
    pub cn: Option<String>,
    pub dns: Option<String>,
    pub uri: Option<String>,
    pub user: Option<String>,
}

// Tokens are secrets: the derived Debug would print them.
impl std::fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFile")
            .field("mode", &self.mode)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CommandsFile {
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Redis: how scripts, which run commands inside Redis past cachegate, are kept from the
    /// disabled ones: "backend_acl" or "unguarded".
    pub scripts: Option<String>,
}

#[derive(Default, Deserialize)]
pub struct UpstreamFile {
    pub address: Option<String>,
    /// memcached: the ring's nodes, "host:port" or "host:port:weight"; Redis Cluster: seed
    /// nodes, "host:port".
    #[serde(default)]
    pub nodes: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the upstream password.
    pub password_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    pub warm_connections: Option<u64>,
    pub max_idle: Option<u64>,
    /// Redis: share upstream connections between sessions that hold no connection state.
    pub multiplex: Option<bool>,
    pub shared_connections: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub health_interval: Option<Duration>,
    pub tls: Option<ClientTlsFile>,
    /// Redis: the upstream is a Redis Cluster; `nodes` (or `address`) are its seed nodes.
    pub cluster: Option<bool>,
    /// How often the cluster's slot map is read again when nothing asks for it sooner.
    #[serde(default, with = "humantime_serde")]
    pub cluster_refresh: Option<Duration>,
    /// Redis Cluster: read-only commands may be served by replicas (off by default: a client
    /// may not read its own writes there at once).
    pub read_from_replicas: Option<bool>,
}

impl std::fmt::Debug for UpstreamFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamFile")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ClientTlsFile {
    pub enabled: Option<bool>,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}
