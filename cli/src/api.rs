//! A client of the producer's admin API (`/api/…`, documented at `/api/openapi.json`): what the CLI
//! uses when `SYNCFLEET_API_URL` and `SYNCFLEET_TOKEN` are set, so the token's role decides and the
//! API records the token in the audit trail.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::exit::CliError;

/// How long one API request may take (the producer answers within its own request timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the producer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiClient {
    base: reqwest::Url,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the producer at `base` (`https://host[:port][/prefix]`) with a bearer `token`.
    pub fn new(base: &str, token: &str) -> anyhow::Result<ApiClient> {
        let mut base = reqwest::Url::parse(base.trim())
            .map_err(|e| anyhow::anyhow!("SYNCFLEET_API_URL: `{base}` is not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("SYNCFLEET_API_URL: `{base}` must start with http:// or https://");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("syncfleet-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ApiClient { base, token: token.trim().to_owned(), http })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<T> {
        self.send(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> anyhow::Result<T> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: Value) -> anyhow::Result<T> {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// One request; an answer other than 2xx becomes an error carrying the API's message (401 and
    /// 403: [`CliError::NotAllowed`]; 409 `active_run` / `exclusive_run`: [`CliError::Refused`]).
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = self.base.join(path.trim_start_matches('/'))?;
        let mut request = self.http.request(method.clone(), url.clone()).bearer_auth(&self.token).query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() { "did not answer in time" } else { "could not be reached" };
            anyhow::Error::new(e).context(CliError::Unreachable(format!("the API at {} {what}", self.base)))
        })?;
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{method} {}: unexpected answer: {e}", url.path()));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = body["message"].as_str().map(str::to_owned).unwrap_or_else(|| text.trim().to_owned());
        let message = if message.is_empty() { status.to_string() } else { message };
        Err(match (status, body["error"].as_str()) {
            (StatusCode::UNAUTHORIZED, _) => {
                CliError::NotAllowed(format!("the API refused the token (SYNCFLEET_TOKEN): {message}")).into()
            }
            (StatusCode::FORBIDDEN, _) => CliError::NotAllowed(format!("the API refused: {message}")).into(),
            (StatusCode::CONFLICT, Some("active_run" | "exclusive_run")) => CliError::Refused(message).into(),
            (StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT, _)
                if body.is_null() =>
            {
                CliError::Unreachable(format!("the API at {} answered {status}", self.base)).into()
            }
            _ => anyhow::anyhow!("{message} ({method} {}: {status})", url.path()),
        })
    }
}

/// A path segment, percent-encoded (chain, integration, queue and token names are free text).
pub fn segment(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("static URL");
    url.path_segments_mut().expect("base URL").push(s);
    url.path().trim_start_matches('/').to_owned()
}
