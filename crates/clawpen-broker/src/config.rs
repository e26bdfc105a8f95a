//! The `[broker]` section: where providers send the user back, limits, and one table per
//! provider (`[broker.providers.google]`, `.github`, `.slack`, `.trello`, `.notion`). A provider left out cannot be
//! connected. Every endpoint has the real provider's URL as its default, so a deployment gives
//! only the client id and where its secret is; tests point them at stand-ins.
//!
//! Client secrets are read from an environment variable or a file (mode 0600, like the vault's
//! key file) when the broker is made, held as [`Secret`], and never printed.

use std::path::PathBuf;

use clawpen_vault::Secret;
use serde::{Deserialize, Deserializer, Serialize};

use crate::catalogue::Provider;
use crate::BrokerError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The server's OAuth callback as the providers see it, e.g.
    /// `https://clawpen.example.com/api/v1/integrations/callback`; registered with each
    /// provider's app. Required once any provider is configured.
    pub redirect_uri: Option<String>,
    /// How long a read result is reused for the same tenant, connection, tool and arguments.
    pub cache_secs: u64,
    /// Most tool calls one run may make (every call counts, refused ones too).
    pub max_calls_per_run: u32,
    /// How long one request to a provider may take in all.
    pub request_timeout_secs: u64,
    /// Largest provider answer read; a JSON answer past it is refused, a file's text is cut.
    pub max_response_bytes: usize,
    /// How long a connection may take between `begin_connect` and the callback.
    pub state_ttl_secs: u64,
    /// A PEM CA certificate to trust besides the system's roots (a private gateway).
    pub ca_file: Option<PathBuf>,
    pub providers: Providers,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            redirect_uri: None,
            cache_secs: 30,
            max_calls_per_run: 24,
            request_timeout_secs: 10,
            max_response_bytes: 1024 * 1024,
            state_ttl_secs: 600,
            ca_file: None,
            providers: Providers::default(),
        }
    }
}

/// The providers this server can connect to; each is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Providers {
    #[serde(deserialize_with = "google")]
    pub google: Option<ProviderConfig>,
    #[serde(deserialize_with = "github")]
    pub github: Option<ProviderConfig>,
    #[serde(deserialize_with = "slack")]
    pub slack: Option<ProviderConfig>,
    #[serde(deserialize_with = "trello")]
    pub trello: Option<ProviderConfig>,
    #[serde(deserialize_with = "notion")]
    pub notion: Option<ProviderConfig>,
}

impl Providers {
    pub fn get(&self, p: Provider) -> Option<&ProviderConfig> {
        match p {
            Provider::Google => self.google.as_ref(),
            Provider::Github => self.github.as_ref(),
            Provider::Slack => self.slack.as_ref(),
            Provider::Trello => self.trello.as_ref(),
            Provider::Notion => self.notion.as_ref(),
        }
    }

    /// Sets the table of `p`.
    pub fn set(&mut self, p: Provider, c: ProviderConfig) {
        let slot = match p {
            Provider::Google => &mut self.google,
            Provider::Github => &mut self.github,
            Provider::Slack => &mut self.slack,
            Provider::Trello => &mut self.trello,
            Provider::Notion => &mut self.notion,
        };
        *slot = Some(c);
    }
}

/// One provider's OAuth app and endpoints. After loading every URL is filled in (the real
/// provider's unless the file gave another).
#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    /// The OAuth app's client id (public).
    pub client_id: String,
    /// The environment variable holding the client secret …
    pub client_secret_env: Option<String>,
    /// … or a file holding it (mode 0600).
    pub client_secret_file: Option<PathBuf>,
    /// Where the user is sent to consent.
    pub authorize_url: String,
    /// Where codes and refresh tokens are exchanged (form-encoded POST).
    pub token_url: String,
    /// Where a grant is revoked at disconnect (Google `POST …/revoke`; GitHub
    /// `DELETE …/applications/{client_id}/grant`; Slack `…/api/auth.revoke`; Notion
    /// `POST …/v1/oauth/revoke`). Trello has none: the user removes the app in their Atlassian
    /// account, and disconnecting deletes what clawpen holds.
    pub revoke_url: Option<String>,
    /// The API every tool's path is under.
    pub api_base: String,
}

/// The file's form of [`ProviderConfig`]: endpoints optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    client_id: String,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    authorize_url: Option<String>,
    token_url: Option<String>,
    revoke_url: Option<String>,
    api_base: Option<String>,
}

fn google<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderConfig>, D::Error> {
    Ok(Some(ProviderConfig::filled(Provider::Google, ProviderFile::deserialize(d)?)))
}
fn github<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderConfig>, D::Error> {
    Ok(Some(ProviderConfig::filled(Provider::Github, ProviderFile::deserialize(d)?)))
}
fn slack<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderConfig>, D::Error> {
    Ok(Some(ProviderConfig::filled(Provider::Slack, ProviderFile::deserialize(d)?)))
}
fn trello<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderConfig>, D::Error> {
    Ok(Some(ProviderConfig::filled(Provider::Trello, ProviderFile::deserialize(d)?)))
}
fn notion<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderConfig>, D::Error> {
    Ok(Some(ProviderConfig::filled(Provider::Notion, ProviderFile::deserialize(d)?)))
}

/// The real endpoints of each provider: (authorize, token, API base).
pub fn default_endpoints(p: Provider) -> (&'static str, &'static str, &'static str) {
    match p {
        Provider::Google => ("https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token", "https://www.googleapis.com"),
        Provider::Github => ("https://github.com/login/oauth/authorize", "https://github.com/login/oauth/access_token", "https://api.github.com"),
        Provider::Slack => ("https://slack.com/oauth/v2/authorize", "https://slack.com/api/oauth.v2.access", "https://slack.com"),
        // Trello's OAuth 2.0 is Atlassian's (3LO, with PKCE); its REST API is version 1.
        Provider::Trello => ("https://auth.atlassian.com/authorize", "https://auth.atlassian.com/oauth/token", "https://api.trello.com/1"),
        Provider::Notion => ("https://api.notion.com/v1/oauth/authorize", "https://api.notion.com/v1/oauth/token", "https://api.notion.com"),
    }
}

fn default_revoke(p: Provider, api_base: &str, client_id: &str) -> Option<String> {
    let api = api_base.trim_end_matches('/');
    match p {
        Provider::Google => Some("https://oauth2.googleapis.com/revoke".to_owned()),
        Provider::Github => Some(format!("{api}/applications/{}/grant", crate::http::segment(client_id))),
        Provider::Slack => Some(format!("{api}/api/auth.revoke")),
        Provider::Trello => None,
        Provider::Notion => Some(format!("{api}/v1/oauth/revoke")),
    }
}

impl ProviderConfig {
    /// A provider with the real endpoints and its secret in `secret_env`.
    pub fn new(p: Provider, client_id: &str, secret_env: &str) -> ProviderConfig {
        ProviderConfig::filled(p, ProviderFile {
            client_id: client_id.to_owned(),
            client_secret_env: Some(secret_env.to_owned()),
            client_secret_file: None,
            authorize_url: None,
            token_url: None,
            revoke_url: None,
            api_base: None,
        })
    }

    /// Every endpoint under one base URL (a stand-in such as `clawpen_standin::ProviderStandin`):
    /// the provider's real paths on that host, and the API at `{base}` (Trello's at `{base}/1`).
    pub fn at(p: Provider, base: &str, client_id: &str, secret_env: &str) -> ProviderConfig {
        let base = base.trim_end_matches('/');
        let (authorize, token, _) = default_endpoints(p);
        let path = |url: &str| format!("{base}{}", reqwest::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_default());
        ProviderConfig::filled(p, ProviderFile {
            client_id: client_id.to_owned(),
            client_secret_env: Some(secret_env.to_owned()),
            client_secret_file: None,
            authorize_url: Some(path(authorize)),
            token_url: Some(path(token)),
            revoke_url: (p == Provider::Google).then(|| format!("{base}/revoke")),
            api_base: Some(if p == Provider::Trello { format!("{base}/1") } else { base.to_owned() }),
        })
    }

    fn filled(p: Provider, f: ProviderFile) -> ProviderConfig {
        let (authorize, token, api) = default_endpoints(p);
        let api_base = f.api_base.unwrap_or_else(|| api.to_owned());
        let revoke_url = f.revoke_url.or_else(|| default_revoke(p, &api_base, &f.client_id));
        ProviderConfig {
            client_id: f.client_id,
            client_secret_env: f.client_secret_env,
            client_secret_file: f.client_secret_file,
            authorize_url: f.authorize_url.unwrap_or_else(|| authorize.to_owned()),
            token_url: f.token_url.unwrap_or_else(|| token.to_owned()),
            revoke_url,
            api_base,
        }
    }
}

/// A provider ready to use: URLs parsed, the secret read.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedProvider {
    pub kind: Provider,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub authorize_url: reqwest::Url,
    pub token_url: reqwest::Url,
    pub revoke_url: Option<reqwest::Url>,
    pub api_base: reqwest::Url,
}

fn parse_url(p: Provider, key: &str, s: &str) -> Result<reqwest::Url, BrokerError> {
    let url = reqwest::Url::parse(s).map_err(|e| BrokerError::Config(format!("broker.providers.{}.{key}: {s:?} is not a URL: {e}", p.as_str())))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(BrokerError::Config(format!("broker.providers.{}.{key}: {s:?} must be an http(s) URL with a host", p.as_str())));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(BrokerError::Config(format!("broker.providers.{}.{key}: {s:?} may carry no query, fragment or credentials", p.as_str())));
    }
    Ok(url)
}

/// Reads a client secret from the named variable or a 0600 file. Errors name where, never what.
fn read_secret(p: Provider, c: &ProviderConfig) -> Result<Secret<String>, BrokerError> {
    let name = p.as_str();
    let value = match (&c.client_secret_env, &c.client_secret_file) {
        (Some(var), None) => std::env::var(var).map_err(|_| BrokerError::Config(format!("broker.providers.{name}: the environment variable {var} is not set")))?,
        (None, Some(path)) => {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| BrokerError::Config(format!("broker.providers.{name}: cannot read {}: {e}", path.display())))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(BrokerError::Config(format!("broker.providers.{name}: {} may be read by others; run `chmod 600 {}`", path.display(), path.display())));
            }
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| BrokerError::Config(format!("broker.providers.{name}: cannot read {}: {e}", path.display())))?);
            text.trim().to_owned()
        }
        _ => return Err(BrokerError::Config(format!("broker.providers.{name}: give exactly one of client_secret_env or client_secret_file"))),
    };
    if value.is_empty() {
        return Err(BrokerError::Config(format!("broker.providers.{name}: the client secret is empty")));
    }
    Ok(Secret::new(value))
}

impl BrokerConfig {
    /// Checks the section and reads every configured provider's secret.
    pub(crate) fn resolve(&self) -> Result<Vec<ResolvedProvider>, BrokerError> {
        let mut out = Vec::new();
        for p in Provider::ALL {
            let Some(c) = self.providers.get(p) else { continue };
            if c.client_id.is_empty() || c.client_id.len() > 512 || c.client_id.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                return Err(BrokerError::Config(format!("broker.providers.{}.client_id is empty or not a client id", p.as_str())));
            }
            let mut api_base = parse_url(p, "api_base", &c.api_base)?;
            // Paths are appended to the base's own: make it end in one slash-less prefix.
            let trimmed = api_base.path().trim_end_matches('/').to_owned();
            api_base.set_path(&trimmed);
            out.push(ResolvedProvider {
                kind: p,
                client_id: c.client_id.clone(),
                client_secret: read_secret(p, c)?,
                authorize_url: parse_url(p, "authorize_url", &c.authorize_url)?,
                token_url: parse_url(p, "token_url", &c.token_url)?,
                revoke_url: c.revoke_url.as_deref().map(|u| parse_url(p, "revoke_url", u)).transpose()?,
                api_base,
            });
        }
        if !out.is_empty() {
            let Some(uri) = &self.redirect_uri else {
                return Err(BrokerError::Config("broker.redirect_uri must be set (the server's OAuth callback URL, as registered with each provider)".into()));
            };
            let url = reqwest::Url::parse(uri).map_err(|e| BrokerError::Config(format!("broker.redirect_uri: {uri:?} is not a URL: {e}")))?;
            if !matches!(url.scheme(), "https" | "http") || url.fragment().is_some() {
                return Err(BrokerError::Config(format!("broker.redirect_uri: {uri:?} must be an http(s) URL without a fragment")));
            }
        }
        if self.max_calls_per_run == 0 || self.request_timeout_secs == 0 || self.state_ttl_secs == 0 || self.max_response_bytes < 16 * 1024 {
            return Err(BrokerError::Config("broker: max_calls_per_run, request_timeout_secs and state_ttl_secs must be at least 1, max_response_bytes at least 16384".into()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_real_endpoints_and_unknown_keys_are_refused() {
        let c: BrokerConfig = toml_like(r#"{"redirect_uri": "https://x.example/cb", "providers": {"github": {"client_id": "Iv1.abc", "client_secret_env": "GH_SECRET"}}}"#);
        let gh = c.providers.github.unwrap();
        assert_eq!(gh.authorize_url, "https://github.com/login/oauth/authorize");
        assert_eq!(gh.token_url, "https://github.com/login/oauth/access_token");
        assert_eq!(gh.revoke_url.as_deref(), Some("https://api.github.com/applications/Iv1.abc/grant"));
        assert!(c.providers.google.is_none());
        assert_eq!(c.cache_secs, 30);
        let bad = serde_json::from_str::<BrokerConfig>(r#"{"providers": {"github": {"client_id": "x", "client_secret": "inline"}}}"#);
        assert!(bad.is_err(), "an inline secret is an unknown key");
        assert!(serde_json::from_str::<BrokerConfig>(r#"{"providers": {"gitlab": {"client_id": "x"}}}"#).is_err());
        let at = ProviderConfig::at(Provider::Slack, "http://127.0.0.1:9/", "id", "V");
        assert_eq!((at.authorize_url.as_str(), at.token_url.as_str(), at.revoke_url.as_deref(), at.api_base.as_str()), ("http://127.0.0.1:9/oauth/v2/authorize", "http://127.0.0.1:9/api/oauth.v2.access", Some("http://127.0.0.1:9/api/auth.revoke"), "http://127.0.0.1:9"));
        let at = ProviderConfig::at(Provider::Google, "http://127.0.0.1:9", "id", "V");
        assert_eq!((at.authorize_url.as_str(), at.token_url.as_str(), at.revoke_url.as_deref()), ("http://127.0.0.1:9/o/oauth2/v2/auth", "http://127.0.0.1:9/token", Some("http://127.0.0.1:9/revoke")));
        let at = ProviderConfig::at(Provider::Trello, "http://127.0.0.1:9", "id", "V");
        assert_eq!((at.authorize_url.as_str(), at.token_url.as_str(), at.revoke_url.as_deref(), at.api_base.as_str()), ("http://127.0.0.1:9/authorize", "http://127.0.0.1:9/oauth/token", None, "http://127.0.0.1:9/1"));
        let at = ProviderConfig::at(Provider::Notion, "http://127.0.0.1:9", "id", "V");
        assert_eq!((at.authorize_url.as_str(), at.token_url.as_str(), at.revoke_url.as_deref(), at.api_base.as_str()), ("http://127.0.0.1:9/v1/oauth/authorize", "http://127.0.0.1:9/v1/oauth/token", Some("http://127.0.0.1:9/v1/oauth/revoke"), "http://127.0.0.1:9"));
    }

    #[test]
    fn a_secret_is_read_from_the_environment_or_a_private_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = ProviderConfig::new(Provider::Google, "id.apps", "UNUSED");
        c.client_secret_env = None;
        c.client_secret_file = Some(path.clone());
        let e = read_secret(Provider::Google, &c).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("s3cr3t"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = read_secret(Provider::Google, &c).unwrap();
        assert_eq!(s.expose(), "s3cr3t-value");
        assert_eq!(format!("{s:?}"), "[redacted]");
        c.client_secret_env = Some("CLAWPEN_BROKER_TEST_NO_SUCH_VAR".into());
        assert!(read_secret(Provider::Google, &c).unwrap_err().to_string().contains("exactly one"));
    }

    fn toml_like(json: &str) -> BrokerConfig {
        serde_json::from_str(json).unwrap()
    }
}
