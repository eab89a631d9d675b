//! A pack is a plug-in: `NotesPack` below is defined only in this file, registered beside the
//! build's packs, and runs a chain end to end on the real producer and worker: its `prepare`
//! creates its table, its step pulls through the SDK's sync contract, and the deletion guard's
//! decision is recorded on the step. No file outside this test knows it.

use std::sync::Arc;

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};
use sqlx::PgPool;
use syncfleet_sdk::{
    Pack,
    chain::{ChainDef, Mode, StepDef, StepKind},
    ids::ChainName,
    step::{StepContext, StepError, StepHandler},
    sync::{
        Item, Page, Record, Source, SourceError,
        pull::{self, PullSpec},
        table::{Column, ColumnType, Table},
    },
};
use syncfleet_store::integrations::{self, IntegrationChange};
use syncfleet_tests::TestEnv;

const PACK: &str = "notes";
const CHAIN: &str = "notes_sync";
const TABLE: &str = "test_notes";

/// Notes kept in the integration's own settings (`{"notes": [{"id": "1", "title": "…"}]}`): the
/// "upstream" of this pack, so the test changes it by updating the integration.
struct NotesPack;

fn table() -> Table {
    Table::new(TABLE, vec![Column { name: "title".into(), ty: ColumnType::Text }]).expect("a valid table")
}

impl Pack for NotesPack {
    fn name(&self) -> &'static str {
        PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        vec![ChainDef {
            name: ChainName::parse(CHAIN).expect("valid"),
            pack: PACK.into(),
            description: "Notes from the integration's settings into test_notes.".into(),
            steps: vec![StepDef::new("pull_notes", StepKind::Pull, "notes")],
        }]
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![("pull_notes", Arc::new(PullNotes))]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        match settings.get("notes") {
            Some(Value::Array(_)) => Ok(()),
            _ => Err(("notes".into(), "expected an array of notes".into())),
        }
    }

    fn prepare<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        _: &'a str,
        _: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move { table().ensure(conn, true).await.map_err(|e| e.to_string()) }.boxed()
    }
}

struct PullNotes;

impl StepHandler for PullNotes {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let notes = ctx.integration.settings["notes"].as_array().cloned().unwrap_or_default();
            let mut source = Notes(Some(notes));
            ctx.result = pull::pull(ctx, &PullSpec::new("notes", table()), &mut source).await?;
            Ok(())
        }
        .boxed()
    }
}

/// One page of every note.
struct Notes(Option<Vec<Value>>);

impl Source for Notes {
    fn next_page(
        &mut self,
        _since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        let page = self.0.take().map(|notes| Page {
            total: Some(notes.len() as i64),
            short: None,
            items: notes
                .into_iter()
                .map(|n| {
                    let mut fields = serde_json::Map::new();
                    fields.insert("title".into(), n["title"].clone());
                    Item::Record(Record {
                        external_id: n["id"].as_str().unwrap_or_default().to_owned(),
                        cursor: None,
                        fields,
                        raw: n,
                    })
                })
                .collect(),
        });
        async move { Ok(page) }.boxed()
    }
}

fn change(pack: Option<&str>, settings: Value) -> IntegrationChange {
    IntegrationChange { pack: pack.map(str::to_owned), settings: Some(settings), ..Default::default() }
}

fn notes(ids: std::ops::Range<u32>) -> Value {
    json!({ "notes": ids.map(|i| json!({ "id": i.to_string(), "title": format!("note {i}") })).collect::<Vec<_>>() })
}

/// (external id, title, active) of every row, by id.
async fn rows(pool: &PgPool) -> Vec<(String, Option<String>, bool)> {
    sqlx::query_as("SELECT external_id, title, is_active FROM test_notes ORDER BY external_id::int")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pack_defined_only_in_a_test_runs_its_chain_with_the_engines_guard() {
    let registry = syncfleet_registry::builtin().with(NotesPack);
    let env = TestEnv::with_registry(registry, "").await;
    // Created as the admin API creates it: the settings checked and the table prepared by the pack
    // (as the owner role: the services' runtime role creates no table).
    let owner = env.owner_pool().await;
    integrations::create(&owner, &env.registry, "mine", &change(Some(PACK), notes(0..20))).await.unwrap();
    let worker = env.spawn_worker("w").await;

    let first = env.run_to_end(CHAIN, "mine", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:?}");
    let step = &first.steps[0];
    assert_eq!((step.fetched, step.inserted, step.deactivated), (20, 20, 0), "{step:?}");
    let all = rows(&env.pool).await;
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(id, title, active)| *active && title.as_deref() == Some(&format!("note {id}"))));

    // Two of twenty gone upstream (10 %, under the 15 % threshold): swept.
    integrations::update(&env.pool, &env.registry, "mine", &change(None, notes(2..20))).await.unwrap();
    let second = env.run_to_end(CHAIN, "mine", Mode::Full, false).await;
    let step = &second.steps[0];
    assert_eq!((step.fetched, step.deactivated), (18, 2), "{step:?}");
    assert!(step.guard.as_deref().is_some_and(|g| g.contains("swept")), "{step:?}");
    let inactive: Vec<String> = rows(&env.pool).await.into_iter().filter(|r| !r.2).map(|r| r.0).collect();
    assert_eq!(inactive, ["0", "1"]);

    // Half of what is left gone at once: the guard refuses, nothing is deactivated, the decision is
    // on the step.
    integrations::update(&env.pool, &env.registry, "mine", &change(None, notes(11..20))).await.unwrap();
    let third = env.run_to_end(CHAIN, "mine", Mode::Full, false).await;
    let step = &third.steps[0];
    assert_eq!((step.fetched, step.deactivated), (9, 0), "{step:?}");
    assert!(step.guard.as_deref().is_some_and(|g| g.starts_with("blocked")), "{step:?}");
    assert_eq!(rows(&env.pool).await.iter().filter(|r| r.2).count(), 18);

    // The pack's settings check guards the admin API as any built-in pack's does.
    let err = integrations::create(&env.pool, &env.registry, "bad", &change(Some(PACK), json!({ "notes": "none" })))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("settings.notes: expected an array"), "{err}");

    worker.stop().await;
    env.finish().await;
}
