//! Helpers shared by the sandbox tests: start a sandbox, call it, read its control API.
#![allow(dead_code)]

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use syncfleet_sandbox::{SandboxConfig, SandboxHandle, spawn};

pub struct Sb {
    pub h: SandboxHandle,
    pub http: Client,
}

pub async fn start(config: SandboxConfig) -> Sb {
    let h = spawn(config).await.expect("sandbox starts");
    Sb { h, http: Client::new() }
}

/// Small scale, rate limits off (tests that are not about the limit).
pub async fn start_small() -> Sb {
    start(SandboxConfig::default().unlimited()).await
}

impl Sb {
    pub async fn control_get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.h.control_url()))
            .bearer_auth(&self.h.config.control_token)
            .send()
            .await
            .expect("control");
        assert_eq!(r.status(), StatusCode::OK, "control GET {path}");
        r.json().await.expect("json")
    }

    pub async fn control_post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.h.control_url()))
            .bearer_auth(&self.h.config.control_token)
            .json(&body)
            .send()
            .await
            .expect("control");
        assert_eq!(r.status(), StatusCode::OK, "control POST {path}");
        r.json().await.expect("json")
    }

    pub async fn set_faults(&self, api: &str, body: Value) -> Value {
        let r = self
            .http
            .put(format!("{}/faults/{api}", self.h.control_url()))
            .bearer_auth(&self.h.config.control_token)
            .json(&body)
            .send()
            .await
            .expect("faults");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }

    pub async fn count(&self, api: &str, what: &str) -> u64 {
        let info = self.control_get("/info").await;
        info["counts"][api][what].as_u64().unwrap_or_else(|| panic!("count {api}.{what} in {info}"))
    }

    /// GET on Northpass with the key.
    pub async fn np(&self, path_and_query: &str) -> Response {
        self.http
            .get(format!("{}{path_and_query}", self.h.northpass_url()))
            .header("X-Api-Key", &self.h.config.northpass_key)
            .send()
            .await
            .expect("northpass")
    }

    pub async fn np_json(&self, path_and_query: &str) -> Value {
        let r = self.np(path_and_query).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path_and_query}");
        r.json().await.expect("json")
    }

    /// Follows `links.next` from `first` to the end; returns every item.
    pub async fn np_all(&self, first: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut url = format!("{}{first}", self.h.northpass_url());
        loop {
            let r = self.http.get(&url).header("X-Api-Key", &self.h.config.northpass_key).send().await.expect("page");
            assert_eq!(r.status(), StatusCode::OK, "GET {url}");
            let body: Value = r.json().await.expect("json");
            items.extend(body["data"].as_array().expect("data array").iter().cloned());
            match body["links"]["next"].as_str() {
                Some(next) => url = next.to_string(),
                None => {
                    assert!(body["links"].get("next").is_none(), "next is omitted on the last page");
                    break;
                }
            }
        }
        items
    }

    pub fn ip(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.h.impartner_url()))
            .header("Authorization", format!("prm-key {}", self.h.config.impartner_key))
            .header("X-PRM-TenantId", &self.h.config.impartner_tenant)
    }

    pub async fn ip_get(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self.ip(reqwest::Method::GET, path).query(query).send().await.expect("impartner");
        let s = r.status();
        (s, r.json().await.expect("json"))
    }

    /// Moodle call with form-encoded POST params (wstoken and format added).
    /// The first Moodle course's id and its enrolled users (every field).
    pub async fn moodle_first_course(&self) -> (String, Value) {
        let courses = self.moodle("core_course_get_courses_by_field", &[]).await;
        let id = courses["courses"][0]["id"].to_string();
        let users = self.moodle("core_enrol_get_enrolled_users", &[("courseid", &id)]).await;
        (id, users)
    }

    pub async fn moodle(&self, function: &str, params: &[(&str, &str)]) -> Value {
        let mut form: Vec<(&str, &str)> =
            vec![("wstoken", &self.h.config.moodle_token), ("wsfunction", function), ("moodlewsrestformat", "json")];
        form.extend_from_slice(params);
        let body: String = form.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
        let r = self
            .http
            .post(self.h.moodle_url())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("moodle");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }

    /// A request to the ERP API with the bearer token; `path` follows `/erp/api`.
    pub fn erp_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.h.erp_url())).bearer_auth(&self.h.config.erp_token)
    }

    /// Sends `req` and returns the status with the JSON body.
    pub async fn send_json(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = req.send().await.expect("request");
        let s = r.status();
        (s, r.json().await.expect("json"))
    }

    /// `GET /erp/api/items/{id}`.
    pub async fn erp_item(&self, id: i64) -> (StatusCode, Value) {
        Self::send_json(self.erp_req(reqwest::Method::GET, &format!("/items/{id}"))).await
    }

    pub async fn erp(&self, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}/items", self.h.erp_url()))
            .bearer_auth(&self.h.config.erp_token)
            .query(query)
            .send()
            .await
            .expect("erp");
        let s = r.status();
        (s, r.json().await.expect("json"))
    }
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
