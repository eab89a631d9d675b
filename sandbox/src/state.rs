//! Shared server state: the data set, fault settings, rate windows, request counters and the log of
//! what clients wrote. One [`AppState`] per running sandbox, behind an `Arc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Api, FaultSettings, SandboxConfig};
use crate::data::Dataset;
use crate::util::unit;

/// Requests seen for one endpoint (method + route template).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointCounter {
    pub requests: u64,
    pub throttled: u64,
    pub unauthorized: u64,
    pub errors_5xx: u64,
    pub timeouts: u64,
}

/// Everything clients wrote, for tests to check push steps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Writes {
    pub northpass: NorthpassWrites,
    pub impartner: ImpartnerWrites,
    pub erp: ErpWrites,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NorthpassWrites {
    /// `{group_id, person_id, at}`; re-adds of existing members are not listed (they are no-ops).
    pub membership_adds: Vec<Value>,
    pub membership_removes: Vec<Value>,
    /// `{group_id, name, existing}`: `existing` when the name was taken and the old group came back.
    pub group_creations: Vec<Value>,
    pub group_deletions: Vec<Value>,
    /// `{person_id, attributes}` as sent.
    pub person_patches: Vec<Value>,
    pub people_created: Vec<Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImpartnerWrites {
    /// `{entity, id, fields}` per successfully patched record, fields as sent (PascalCase).
    pub patches: Vec<Value>,
    pub creates: Vec<Value>,
    pub deletes: Vec<Value>,
    /// Per-entity, per-id merged view of every field patched: `{"Account": {"1295686": {...}}}`.
    pub patched_fields: BTreeMap<String, BTreeMap<String, serde_json::Map<String, Value>>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ErpWrites {
    /// Item patches applied (bulk entries and single PATCHes; failed entries are not counted).
    pub patches: u64,
    /// Per-id merged view of every field patched: `{"17": {"quantity": 5, "warehouse": "MEL-2"}}`.
    pub patched_fields: BTreeMap<String, serde_json::Map<String, Value>>,
}

/// Per-API runtime controls.
#[derive(Debug)]
pub struct ApiControl {
    pub faults: Mutex<FaultSettings>,
    /// credential → (window second, requests in it)
    window: Mutex<HashMap<String, (u64, u32)>>,
    pub counters: Mutex<BTreeMap<String, EndpointCounter>>,
    seq: AtomicU64,
}

impl ApiControl {
    fn new(faults: FaultSettings) -> ApiControl {
        ApiControl {
            faults: Mutex::new(faults),
            window: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
        }
    }
}

pub struct AppState {
    pub config: SandboxConfig,
    pub data: RwLock<Dataset>,
    pub apis: [ApiControl; 4],
    pub writes: Mutex<Writes>,
    /// Moodle calls per `wsfunction`.
    pub moodle_functions: Mutex<BTreeMap<String, u64>>,
    /// Cancelled when the server shuts down (ends hanging "timeout" requests).
    pub shutdown: CancellationToken,
    /// Bumped by each `mutate` so successive mutations pick different records, deterministically.
    pub mutations: AtomicU64,
    started: Instant,
    /// `http://host:port`, for links when the request carries no Host header.
    pub base_url: String,
}

/// Locks a mutex, recovering the data of a poisoned one (a panicking handler must not wedge the server).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
    pub fn new(config: SandboxConfig, data: Dataset, base_url: String, shutdown: CancellationToken) -> AppState {
        let apis = Api::ALL.map(|api| ApiControl::new(config.initial_faults(api)));
        AppState {
            config,
            data: RwLock::new(data),
            apis,
            writes: Mutex::new(Writes::default()),
            moodle_functions: Mutex::new(BTreeMap::new()),
            shutdown,
            mutations: AtomicU64::new(0),
            started: Instant::now(),
            base_url,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Dataset> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Dataset> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn api(&self, api: Api) -> &ApiControl {
        &self.apis[api.index()]
    }

    pub fn faults(&self, api: Api) -> FaultSettings {
        lock(&self.api(api).faults).clone()
    }

    /// Counts one request to `endpoint` and lets `f` update its counter.
    pub fn count(&self, api: Api, endpoint: &str, f: impl FnOnce(&mut EndpointCounter)) {
        let mut counters = lock(&self.api(api).counters);
        match counters.get_mut(endpoint) {
            Some(c) => f(c),
            None => f(counters.entry(endpoint.to_string()).or_default()),
        }
    }

    /// Takes one request from the credential's 1-second window; false when the budget is spent.
    pub fn take_rate(&self, api: Api, credential: &str, rate: u32) -> bool {
        let second = self.started.elapsed().as_secs();
        let mut windows = lock(&self.api(api).window);
        let slot = match windows.get_mut(credential) {
            Some(s) => s,
            None => windows.entry(credential.to_string()).or_insert((second, 0)),
        };
        if slot.0 != second {
            *slot = (second, 0);
        }
        if slot.1 >= rate {
            return false;
        }
        slot.1 += 1;
        true
    }

    /// A deterministic dice roll per request of `api` (fault shares).
    pub fn roll(&self, api: Api) -> f64 {
        let n = self.api(api).seq.fetch_add(1, Ordering::Relaxed);
        unit(self.config.seed ^ (api.index() as u64) << 56, n)
    }

    pub fn reset_counters(&self) {
        for api in &self.apis {
            lock(&api.counters).clear();
        }
        lock(&self.moodle_functions).clear();
    }

    pub fn reset_faults(&self) {
        for api in Api::ALL {
            *lock(&self.api(api).faults) = self.config.initial_faults(api);
            lock(&self.api(api).window).clear();
        }
    }
}
