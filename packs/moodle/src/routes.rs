//! The pack's single-user admin routes, mounted by the producer below
//! `/api/integrations/{integration}/` for `moodle` integrations (the producer authenticates the
//! caller, checks the integration and writes the audit row):
//!
//! - `POST users/{username}/hydrate` (operator, audited as `user.hydrate`): login-time hydration
//!   ([`hydrate::hydrate`]).
//! - `PUT users/{username}/scope` (admin, audited as `user.scope`): the hand-set scope sources
//!   ([`hydrate::set_scope`]). A hand-set scope is configuration that outlives every sync, so it
//!   takes the role of the API's other integration changes.

use std::sync::Arc;

use futures::{FutureExt, future::BoxFuture};
use serde_json::{Value, json};
use syncfleet_sdk::pack::{Method, Role, Route, RouteAnswer, RouteContext, RouteError, RouteHandler, schema_of};

use crate::hydrate::{self, ScopeChange, UserView};

/// The routes of [`MoodlePack`](crate::MoodlePack).
pub fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::Post,
            path: "users/{username}/hydrate",
            role: Role::Operator,
            summary: "Hydrate a Moodle user at login",
            description: "Reads the user from Moodle by username, stores them, and derives their scope (campus, \
                          department, program) and roles with the same function as the `moodle_institutional` \
                          chain. 404 when Moodle has no such user, 502 when Moodle cannot be read.",
            request: None,
            response: schema_of::<UserView>(),
            audit: Some("user.hydrate"),
            handler: Arc::new(Hydrate),
        },
        Route {
            method: Method::Put,
            path: "users/{username}/scope",
            role: Role::Admin,
            summary: "Set a Moodle user's scope by hand",
            description: "`department_source` / `program_source` `manual` keeps the derivation away from the \
                          user (both fields), `auto` hands them back; a given `department_id` / `program_id` is \
                          stored and makes its source `manual` unless the body says otherwise. 400 for a body \
                          that says nothing or names an unknown category, 404 for a user not stored.",
            request: Some(schema_of::<ScopeChange>()),
            response: schema_of::<UserView>(),
            audit: Some("user.scope"),
            handler: Arc::new(SetScope),
        },
    ]
}

/// `POST users/{username}/hydrate`.
struct Hydrate;

impl RouteHandler for Hydrate {
    fn call<'a>(
        &'a self,
        cx: RouteContext<'a>,
        username: String,
        _body: Option<Value>,
    ) -> BoxFuture<'a, Result<RouteAnswer, RouteError>> {
        async move {
            let deployment: crate::MoodleConfig = serde_json::from_value(cx.pack_section.clone()).unwrap_or_default();
            let view =
                hydrate::hydrate(cx.pool, cx.http, cx.integration, deployment.sync_concurrency, &username).await?;
            tracing::info!(integration = %cx.integration.name, %username, outcome = ?view.outcome, "User hydrated.");
            let audit = json!({ "outcome": view.outcome, "campus_assigned": view.campus_assigned });
            Ok(RouteAnswer { body: to_body(&view), audit })
        }
        .boxed()
    }
}

/// `PUT users/{username}/scope`.
struct SetScope;

impl RouteHandler for SetScope {
    fn call<'a>(
        &'a self,
        cx: RouteContext<'a>,
        username: String,
        body: Option<Value>,
    ) -> BoxFuture<'a, Result<RouteAnswer, RouteError>> {
        async move {
            let change = scope_change(body)?;
            let view = hydrate::set_scope(cx.pool, cx.integration.id, &username, &change).await?;
            let audit = json!({
                "department_source": view.department_source, "program_source": view.program_source,
                "department_id": view.department_id, "program_id": view.program_id,
            });
            Ok(RouteAnswer { body: to_body(&view), audit })
        }
        .boxed()
    }
}

/// The body of a scope change; one that does not parse is a 400 naming why.
fn scope_change(body: Option<Value>) -> Result<ScopeChange, RouteError> {
    serde_json::from_value(body.unwrap_or(Value::Null)).map_err(|e| RouteError::Invalid(format!("body: {e}")))
}

/// The answer's body (a view of strings and options always serializes).
fn to_body(view: &UserView) -> Value {
    serde_json::to_value(view).expect("a UserView serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hydrate_is_an_operator_route_scope_an_admin_one_and_both_are_audited() {
        let routes = routes();
        let shape: Vec<_> = routes.iter().map(|r| (r.method, r.path, r.param(), r.role, r.audit)).collect();
        assert_eq!(
            shape,
            [
                (Method::Post, "users/{username}/hydrate", "username", Role::Operator, Some("user.hydrate")),
                (Method::Put, "users/{username}/scope", "username", Role::Admin, Some("user.scope")),
            ]
        );
        assert!(routes.iter().all(|r| r.check().is_ok()));
        assert!(routes[0].request.is_none());
        assert_eq!(routes[1].request.as_ref().map(|r| r.name.as_ref()), Some("ScopeChange"));
        assert!(routes.iter().all(|r| r.response.name == "UserView"));
    }

    #[test]
    fn a_scope_body_that_does_not_parse_is_invalid() {
        let change = scope_change(Some(json!({"department_source": "manual", "program_id": "42"}))).unwrap();
        assert_eq!(change.department_source, Some(hydrate::Source::Manual));
        assert_eq!(change.program_id.as_deref(), Some("42"));
        for bad in [Some(json!({"department": "x"})), Some(json!({"program_source": "sometimes"})), None] {
            match scope_change(bad) {
                Err(RouteError::Invalid(m)) => assert!(m.starts_with("body: "), "{m}"),
                other => panic!("{:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn user_errors_keep_their_status() {}
}
