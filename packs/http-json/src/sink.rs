//! The writing side: pushes declared in the config, sent in bulk or one item per call.

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    settings::{PUSH_QUERY_TIMEOUT, PushSpec, Settings},
    url_escape,
};
use syncfleet_sdk::{
    http::HttpClient,
    step::{PhaseResult, StepError},
    sync::{
        SourceError,
        push::{Change, Outcomes, Pusher, Sink},
    },
};

/// Runs the push query in keyset chunks, so memory stays bounded by the chunk. `query` is the
/// config file's (the caller never takes it from the database). Each chunk is read in its own
/// `READ ONLY` transaction under [`PUSH_QUERY_TIMEOUT`], closed before the chunk is sent upstream:
/// even a mistaken query writes nothing, and no transaction stays open while the upstream answers.
pub(super) async fn push_all(
    pool: &sqlx::PgPool,
    integration_id: i64,
    push: &str,
    query: &str,
    pusher: &Pusher<'_>,
    result: &mut PhaseResult,
) -> Result<(), StepError> {
    const CHUNK: i64 = 1000;
    let sql = format!(
        "SELECT q.external_id::text, q.fields::jsonb FROM ({query}) q WHERE q.external_id::text > $2
         ORDER BY q.external_id::text LIMIT $3"
    );
    let mut after = String::new();
    loop {
        let rows = read_chunk(pool, &sql, integration_id, &after, CHUNK)
            .await
            .map_err(|e| StepError::abort(format!("push `{push}`: the push query failed: {e}")).with_source(e))?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = last.0.clone();
        let full = rows.len() as i64 == CHUNK;
        let desired = rows
            .into_iter()
            .map(|(id, fields)| (id, if let Value::Object(m) = fields { m } else { Map::new() }))
            .collect();
        pusher.push_chunk(desired, result).await?;
        if !full {
            return Ok(());
        }
    }
}

/// One chunk of the push query, read in a `READ ONLY` transaction with a `statement_timeout`.
async fn read_chunk(
    pool: &sqlx::PgPool,
    sql: &str,
    integration_id: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Value)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = '{PUSH_QUERY_TIMEOUT}'")))
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(integration_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(rows)
}

pub(super) struct JsonSink<'a> {
    pub(super) settings: &'a Settings,
    pub(super) spec: &'a PushSpec,
    pub(super) client: &'a HttpClient,
    pub(super) headers: &'a [(String, String)],
    pub(super) query: &'a [(String, String)],
    pub(super) cancel: CancellationToken,
}

impl JsonSink<'_> {
    fn id_value(&self, id: &str) -> Value {
        match id.parse::<i64>() {
            Ok(n) if self.spec.numeric_id => Value::from(n),
            _ => Value::from(id),
        }
    }

    async fn send_all(&self, changes: &[Change]) -> Result<Outcomes, SourceError> {
        let method = reqwest::Method::from_bytes(self.spec.method.as_bytes()).unwrap_or(reqwest::Method::PATCH);
        let request = |url: String, body: Value| {
            let (method, headers, query) = (method.clone(), self.headers, self.query);
            move |c: &reqwest::Client| {
                let mut r = c.request(method.clone(), &url).query(query).json(&body);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r
            }
        };
        if !self.spec.path.contains("{id}") {
            let body: Vec<Value> = changes
                .iter()
                .map(|c| {
                    let mut o = c.fields.clone();
                    o.insert(self.spec.id_field.clone(), self.id_value(&c.external_id));
                    Value::Object(o)
                })
                .collect();
            let url = self.settings.url(&self.spec.path);
            let answer = self.client.send(request(url.clone(), Value::Array(body)), &self.cancel).await?;
            // Read under the upstream policy's body cap.
            let answer: Value = self.client.read_json(answer).await?;
            let results = answer
                .pointer(&self.spec.results)
                .and_then(Value::as_array)
                .ok_or_else(|| SourceError::Shape(format!("{url}: no results array at `{}`", self.spec.results)))?;
            return Ok(results
                .iter()
                .filter_map(|r| {
                    let id = match r.pointer(&self.spec.result_id)? {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        _ => return None,
                    };
                    let ok = r.pointer(&self.spec.result_status).and_then(Value::as_str) == Some(&self.spec.ok_status);
                    let message =
                        r.pointer(&self.spec.result_message).and_then(Value::as_str).unwrap_or("refused").to_owned();
                    Some((id, if ok { Ok(()) } else { Err(message) }))
                })
                .collect());
        }
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let url = self.settings.url(&self.spec.path.replace("{id}", &url_escape(&c.external_id)));
            match self.client.send(request(url, Value::Object(c.fields.clone())), &self.cancel).await {
                Ok(_) => out.push((c.external_id.clone(), Ok(()))),
                Err(e) if e.status().is_some_and(|s| (400..500).contains(&s) && s != 429) => {
                    out.push((c.external_id.clone(), Err(e.to_string())));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

impl Sink for JsonSink<'_> {
    fn max_batch(&self) -> usize {
        if self.spec.path.contains("{id}") { 1 } else { self.spec.max_batch }
    }
    fn send<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, Result<Outcomes, SourceError>> {
        self.send_all(changes).boxed()
    }
}
