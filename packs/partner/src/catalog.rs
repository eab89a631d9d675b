//! `sync_courses`: the Northpass course catalog. `sync_npcu`: each course's NPCU from its properties;
//! a course whose properties answer 403 is skipped and counted, never a failure.

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};

use super::{
    northpass::{CourseProperties, Northpass, course_item},
    pull_spec, settings_of, tables,
};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::pull,
};

pub struct SyncCourses;

impl StepHandler for SyncCourses {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let spec = pull_spec(&settings, "courses", tables::courses());
            let outcome = pull::pull(ctx, &spec, &mut api.list("/courses", course_item)).await;
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, "courses", outcome?, 1);
            Ok(())
        }
        .boxed()
    }
}

pub struct SyncNpcu;

impl StepHandler for SyncNpcu {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            // The courses as the catalog step left them; an incremental read takes those changed since
            // the NPCU cursor (the latest course change time read before).
            let courses: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT external_id, source_updated_at FROM partner_courses
                 WHERE integration_id = $1 AND is_active ORDER BY external_id",
            )
            .bind(ctx.integration.id)
            .fetch_all(&ctx.pool)
            .await?;
            let spec = pull_spec(&settings, "npcu", tables::npcu());
            let mut source = CourseProperties::new(&api, courses);
            let outcome = pull::pull(ctx, &spec, &mut source).await;
            let skipped = source.skipped.len();
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, "npcu", outcome?, 1);
            ctx.note(format!("skipped: {skipped} course(s) without readable properties (403/404)"));
            tracing::info!(skipped, "Course properties read.");
            Ok(())
        }
        .boxed()
    }
}
