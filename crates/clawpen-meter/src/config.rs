//! Upstreams, models and prices. Keys are read from the environment or a file at start and held
//! as [`Secret`], which never prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret value: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI's chat-completions API (and any API that reports usage as it does).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google Gemini through its OpenAI-compatible endpoint
    /// (`https://generativelanguage.googleapis.com/v1beta/openai`): thinking tokens are billed
    /// as output and counted in `total_tokens`, not always in `completion_tokens`.
    Gemini,
    /// DeepSeek's OpenAI-compatible API (`https://api.deepseek.com/v1`): cached input in
    /// `prompt_cache_hit_tokens`, reasoning inside `completion_tokens`.
    Deepseek,
    /// xAI's Grok through its OpenAI-compatible API (`https://api.x.ai/v1`): reasoning tokens are
    /// billed as output beside `completion_tokens`, not in it.
    #[serde(alias = "grok")]
    Xai,
}

impl Provider {
    pub const ALL: [Provider; 5] = [Provider::Openai, Provider::Anthropic, Provider::Gemini, Provider::Deepseek, Provider::Xai];

    /// The provider named `name` (as the config and the API spell it).
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Deepseek => "deepseek",
            Provider::Xai => "xai",
        }
    }

    /// The API the provider is called with: OpenAI's chat completions for all but Anthropic.
    pub fn api(self) -> Provider {
        match self {
            Provider::Anthropic => Provider::Anthropic,
            _ => Provider::Openai,
        }
    }
}

/// An upstream API. The key comes from `api_key_env` or `api_key_file`, never from this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub provider: Provider,
    /// e.g. `https://api.openai.com/v1` or `https://api.anthropic.com/v1`.
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
}

/// A model tenants may call, its upstream, and its prices in micro-credits per million tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub upstream: String,
    /// Name sent upstream (default: the model's own name).
    pub upstream_model: Option<String>,
    pub input_per_mtok: i64,
    pub output_per_mtok: i64,
    #[serde(default)]
    pub cache_read_per_mtok: i64,
    #[serde(default)]
    pub cache_write_per_mtok: i64,
    /// The most input tokens one image can count for this model (the provider's figure for its
    /// largest image: about 1,600 for Claude; 1,445 for GPT-4o in high detail, a 2048×768
    /// image); each image is held at this. A model without it refuses images.
    #[serde(default)]
    pub image_tokens_max: Option<i64>,
    /// The model reasons before it answers, in tokens it bills as output but does not stream (an
    /// OpenAI o-series or GPT-5 model): a call whose caller hangs up mid-stream is then charged
    /// its whole max tokens of output, since what it generated cannot be seen.
    #[serde(default)]
    pub reasoning: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterConfig {
    /// The model an agent's `"default"` means.
    pub default_model: Option<String>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    /// How long a hold may stay open before the sweeper voids it.
    pub hold_ttl_secs: u64,
    /// No longer used: a stream whose client went away is closed at once (see the meter's
    /// docs). Accepted so that older config files still load.
    #[serde(skip_serializing)]
    pub drain_secs: u64,
    /// How long a run the server opened ([`crate::Meter::open_run`]) stays open for model calls,
    /// unless closed sooner. A little longer than the agent's longest run.
    pub run_ttl_secs: u64,
    /// How often the sweeper looks for expired holds.
    pub sweep_secs: u64,
    /// How long an upstream call may take in all.
    pub upstream_timeout_secs: u64,
    /// A PEM CA certificate to trust for upstreams besides the system's roots (a private
    /// gateway with its own CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            default_model: None,
            upstreams: BTreeMap::new(),
            models: BTreeMap::new(),
            hold_ttl_secs: 600,
            drain_secs: 0,
            run_ttl_secs: 660,
            sweep_secs: 5,
            upstream_timeout_secs: 300,
            ca_file: None,
        }
    }
}

/// A resolved upstream: where to send, with which key.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub provider: Provider,
    pub base: crate::client::BaseUrl,
    pub key: Secret,
}

impl MeterConfig {
    /// The upstream a tenant's own key for `provider` is checked against and sent to: the
    /// provider's first upstream by name, never another endpoint that speaks the same API.
    pub fn own_key_upstream(&self, provider: Provider) -> Option<(&str, &UpstreamConfig)> {
        self.upstreams.iter().find(|(_, u)| u.provider == provider).map(|(name, u)| (name.as_str(), u))
    }

    /// Checks the references and reads every upstream key.
    pub fn resolve(&self) -> Result<BTreeMap<String, Upstream>, String> {
        let mut out = BTreeMap::new();
        for (name, u) in &self.upstreams {
            let key = match (&u.api_key_env, &u.api_key_file) {
                (Some(var), None) => std::env::var(var).map_err(|_| format!("upstream {name}: the environment variable {var} is not set"))?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("upstream {name}: cannot read its key file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
                _ => return Err(format!("upstream {name}: give exactly one of api_key_env or api_key_file")),
            };
            let base = crate::client::BaseUrl::parse(&u.base_url).map_err(|e| format!("upstream {name}: base_url {e}"))?;
            out.insert(name.clone(), Upstream { name: name.clone(), provider: u.provider, base, key: Secret(key) });
        }
        for (model, m) in &self.models {
            if !self.upstreams.contains_key(&m.upstream) {
                return Err(format!("model {model}: unknown upstream {}", m.upstream));
            }
            if m.input_per_mtok < 0 || m.output_per_mtok < 0 || m.cache_read_per_mtok < 0 || m.cache_write_per_mtok < 0 {
                return Err(format!("model {model}: prices cannot be negative"));
            }
            if m.image_tokens_max.is_some_and(|n| n < 1) {
                return Err(format!("model {model}: image_tokens_max must be at least 1 (leave it out to refuse images)"));
            }
        }
        if let Some(d) = &self.default_model {
            if !self.models.contains_key(d) {
                return Err(format!("default_model {d} is not in [meter.models]"));
            }
        }
        Ok(out)
    }
}
