//! Job payloads: the wire format between producer and workers of different versions during a
//! rolling deploy. One tagged enum; add variants, never change old ones.
//!
//! Task ids are fixed, derived from what the job is, so pushing the same job twice is a no-op in
//! apalis-redis (`HSETNX {queue}:data`):
//! - step job: `{run_id}:{step}`, plus `:{shard}` for a fan-out slice, `:a{n}` from attempt 2 on
//!   (retry or resume), `:w{n}` when re-delivered after a busy entity lease;
//! - scheduled tick: `{chain}:{integration}:{tick}` (the run's `tick_key`).

use serde::{Deserialize, Serialize};

use crate::ids::{ChainName, IntegrationName, RunId, StepName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum JobPayload {
    /// Run one step (or one shard of it) of a chain run. Version 1.
    #[serde(rename = "step.v1")]
    StepV1 {
        run_id: RunId,
        step_run_id: i64,
        step: StepName,
        shard: i32,
        /// The task id this payload was pushed under; a worker runs it only while PostgreSQL
        /// still names this id as the step's current job.
        job_id: String,
        /// W3C `traceparent` of the run's trigger: the worker's step span continues that trace.
        /// Absent in payloads of older producers and when tracing is off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_context: Option<String>,
        /// When the step became due (epoch milliseconds, PostgreSQL's clock): the start of its wait
        /// for a worker. Absent in payloads of older producers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_at_ms: Option<i64>,
        /// The step's entity key, whose lease the worker takes before its claim (the claim is
        /// fenced on `job_id`, so a stale delivery still does nothing). Absent in payloads of
        /// older producers: the worker then reads it from PostgreSQL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity: Option<String>,
    },
}

impl JobPayload {
    /// The W3C `traceparent` of the run the job belongs to, if it carries one.
    pub fn trace_context(&self) -> Option<&str> {
        match self {
            JobPayload::StepV1 { trace_context, .. } => trace_context.as_deref(),
        }
    }
}

/// Task id of a step job; `step_job_id()` in the migrations computes the same string.
pub fn step_job_id(run: RunId, step: &str, shard: i32, sharded: bool, attempt: i32, waits: i32) -> String {
    let mut id = format!("{run}:{step}");
    if sharded {
        id.push_str(&format!(":{shard}"));
    }
    if attempt > 1 {
        id.push_str(&format!(":a{attempt}"));
    }
    if waits > 0 {
        id.push_str(&format!(":w{waits}"));
    }
    id
}

/// Task id / run key of a scheduled tick.
pub fn tick_id(chain: &ChainName, integration: &IntegrationName, tick: i64) -> String {
    format!("{chain}:{integration}:{tick}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_wire_format_is_stable() {
        let run: RunId = "0190a3c4-1111-7222-8333-444455556666".parse().unwrap();
        let p = JobPayload::StepV1 {
            run_id: run,
            step_run_id: 7,
            step: StepName::parse("left").unwrap(),
            shard: 0,
            job_id: step_job_id(run, "left", 0, false, 1, 0),
            trace_context: None,
            due_at_ms: None,
            entity: None,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"type":"step.v1","run_id":"0190a3c4-1111-7222-8333-444455556666","step_run_id":7,"step":"left","shard":0,"job_id":"0190a3c4-1111-7222-8333-444455556666:left"}"#
        );
        assert_eq!(serde_json::from_str::<JobPayload>(&json).unwrap(), p);
    }

    #[test]
    fn trace_context_due_time_and_entity_are_optional_both_ways() {
        let run: RunId = "0190a3c4-1111-7222-8333-444455556666".parse().unwrap();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = JobPayload::StepV1 {
            run_id: run,
            step_run_id: 7,
            step: StepName::parse("left").unwrap(),
            shard: 0,
            job_id: step_job_id(run, "left", 0, false, 1, 0),
            trace_context: Some(traceparent.into()),
            due_at_ms: Some(1_700_000_000_123),
            entity: Some("acme:items".into()),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.ends_with(&format!(
                r#""trace_context":"{traceparent}","due_at_ms":1700000000123,"entity":"acme:items"}}"#
            )),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<JobPayload>(&json).unwrap(), p);
        // A worker of the previous version ignores the new fields: its payload type had none.
        #[derive(serde::Deserialize)]
        #[serde(tag = "type")]
        enum Previous {
            #[serde(rename = "step.v1")]
            StepV1 { job_id: String },
        }
        let Previous::StepV1 { job_id } = serde_json::from_str(&json).unwrap();
        assert_eq!(job_id, format!("{run}:left"));
    }

    #[test]
    fn task_ids() {
        let run: RunId = "0190a3c4-1111-7222-8333-444455556666".parse().unwrap();
        assert_eq!(step_job_id(run, "s", 4, true, 1, 0), format!("{run}:s:4"));
        assert_eq!(step_job_id(run, "s", 0, false, 3, 0), format!("{run}:s:a3"));
        assert_eq!(step_job_id(run, "s", 2, true, 2, 1), format!("{run}:s:2:a2:w1"));
        let c = ChainName::parse("daily").unwrap();
        let i = IntegrationName::parse("acme").unwrap();
        assert_eq!(tick_id(&c, &i, 1700000000), "daily:acme:1700000000");
    }
}
