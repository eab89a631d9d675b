//! The process's HTTP clients: one `reqwest::Client` under the deployment's `[upstream]` policy,
//! the fleet-wide rate budget, a concurrency gate per upstream key, and the `[secrets]` policy;
//! [`HttpClients::client`] hands a step its [`HttpClient`] for one integration's origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::{Client, Url};
use syncfleet_shared::config::UpstreamConfig;
use tokio::sync::Semaphore;

use super::{CONNECT_TIMEOUT, HttpClient, Limits, RateBudget, USER_AGENT, UpstreamPolicy, policy, redact};

/// One per worker process: a shared `reqwest::Client` (with the policy's resolver and redirect
/// rule), the [`UpstreamPolicy`], the [`RateBudget`], and one concurrency gate per upstream key.
#[derive(Clone)]
pub struct HttpClients {
    http: Client,
    policy: Arc<UpstreamPolicy>,
    budget: Option<RateBudget>,
    gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// Where the credentials of requests may be read from (`[secrets]`); set by the process.
    secrets: Option<Arc<crate::secrets::SecretPolicy>>,
}

impl HttpClients {
    /// Clients under the deployment's `[upstream]` policy. Without a budget there is no fleet-wide
    /// rate limit and no shared cool-down.
    pub fn new(budget: Option<RateBudget>, upstream: &UpstreamConfig) -> Self {
        let policy = Arc::new(UpstreamPolicy::from_config(upstream));
        let http = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .dns_resolver(policy::GuardedResolver { policy: policy.clone() })
            .redirect(policy::redirects())
            // A Referer would carry the previous URL's query (credentials) along.
            .referer(false)
            .build()
            .expect("the HTTP client builds with a fixed configuration");
        HttpClients { http, policy, budget, gates: Arc::default(), secrets: None }
    }

    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// The same clients reading credentials under the deployment's `[secrets]` policy
    /// ([`HttpClient::secrets`]); without it every secret a pack names is refused.
    pub fn with_secrets(mut self, policy: crate::secrets::SecretPolicy) -> Self {
        self.secrets = Some(Arc::new(policy));
        self
    }

    /// The `[secrets]` policy the clients were given ([`HttpClient::secrets`]).
    pub fn secrets(&self) -> Result<&crate::secrets::SecretPolicy, String> {
        self.secrets.as_deref().ok_or_else(|| "this process's HTTP clients have no secrets policy ([secrets])".into())
    }

    /// A client for one step of the integration at `base_url`: it sends only to that URL's origin
    /// (scheme, host, port; a `base_url` that is not an absolute http(s) URL fails every request),
    /// and shares the gate and budget of `upstream` (the key several integrations behind one
    /// upstream share, e.g. "erp.example.com"), with fresh [`CallStats`].
    pub fn client(&self, upstream: &str, base_url: &str, limits: &Limits) -> HttpClient {
        let origin = match Url::parse(base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u.origin()),
            _ => Err(format!("the base URL {} is not an absolute http(s) URL", redact::link(base_url))),
        };
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
            let permits = limits.concurrency.clamp(1, Semaphore::MAX_PERMITS);
            gates.entry(upstream.to_string()).or_insert_with(|| Arc::new(Semaphore::new(permits))).clone()
        };
        HttpClient {
            http: self.http.clone(),
            policy: self.policy.clone(),
            origin,
            budget: self.budget.clone(),
            upstream: upstream.into(),
            limits: limits.clone(),
            gate,
            stats: Arc::default(),
            secrets: self.secrets.clone(),
        }
    }
}
