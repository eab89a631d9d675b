//! The packs' own routes (`Pack::routes`), mounted below `/api/integrations/{name}/` and added to
//! the OpenAPI document. One handler serves every pack: it authenticates the caller for the
//! route's role before it reads anything else, finds the enabled integration, and hands the
//! request to that integration's pack. Two packs may declare the same path; the integration's
//! pack decides which serves it. A route that changes anything needs at least the operator role
//! and names its audit action ([`Route::check`]; a pack breaking it is refused at start), and the
//! audit row names the token that made the change.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{FromRequest, Path, Request, State},
    http::Method as HttpMethod,
    routing::{MethodRouter, on},
};
use serde_json::Value;
use syncfleet_sdk::{
    Registry,
    pack::{Method, Role as PackRole, Route, RouteContext, RouteError},
};
use syncfleet_store::{self as store, StoreError, tokens::Role};
use utoipa::openapi::{
    self, ContentBuilder, HttpMethod as DocMethod, OpenApi, PathItem, Ref, RefOr, ResponseBuilder,
    path::{OperationBuilder, ParameterBuilder, ParameterIn},
    request_body::RequestBodyBuilder,
    security::SecurityRequirement,
};

use super::ApiError;
use crate::ops::Ops;

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(m) => ApiError::NotFound(m),
            RouteError::Invalid(m) => ApiError::BadRequest(m),
            RouteError::Upstream(m) => ApiError::BadGateway(m),
            RouteError::Db(e) => ApiError::Store(StoreError::Db(e)),
        }
    }
}

fn role(r: PackRole) -> Role {
    match r {
        PackRole::Viewer => Role::Viewer,
        PackRole::Operator => Role::Operator,
        PackRole::Admin => Role::Admin,
    }
}

/// The axum path of a pack route (`/api/integrations/{name}/users/{username}/hydrate`).
fn full_path(route: &Route) -> String {
    format!("/api/integrations/{{name}}/{}", route.path)
}

/// Every pack route, grouped by (method, path): the packs that serve each. Panics on a route that
/// changes data without the operator role or an audit action: a pack's build error.
fn grouped(registry: &Registry) -> BTreeMap<(String, &'static str), Vec<(&'static str, Route)>> {
    let mut by_path: BTreeMap<(String, &'static str), Vec<(&'static str, Route)>> = BTreeMap::new();
    for pack in registry.packs() {
        for route in pack.routes() {
            if let Err(m) = route.check() {
                panic!("pack `{}`: route {} {}: {m}", pack.name(), method_name(route.method), route.path);
            }
            let key = (full_path(&route), method_name(route.method));
            by_path.entry(key).or_default().push((pack.name(), route));
        }
    }
    by_path
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
    }
}

/// The router of every pack route.
pub(super) fn router(registry: &Registry) -> Router<Ops> {
    let mut router = Router::new();
    let mut by_path: BTreeMap<String, MethodRouter<Ops>> = BTreeMap::new();
    for ((path, method), served) in grouped(registry) {
        let served = Arc::new(served);
        let handler = move |state: State<Ops>, path: Path<(String, String)>, request: Request| {
            let served = served.clone();
            async move { call(state, path, request, &served).await }
        };
        let method = HttpMethod::from_bytes(method.as_bytes()).expect("a known method");
        let filter = axum::routing::MethodFilter::try_from(method).expect("a routable method");
        let entry = by_path.remove(&path).unwrap_or_default();
        by_path.insert(path, entry.merge(on(filter, handler)));
    }
    for (path, methods) in by_path {
        router = router.route(&path, methods);
    }
    router
}

async fn call(
    State(ops): State<Ops>,
    Path((name, param)): Path<(String, String)>,
    request: Request,
    served: &[(&'static str, Route)],
) -> Result<Json<Value>, ApiError> {
    let (parts, body) = request.into_parts();
    // Authentication first: the weakest role any pack asks for this path, then the pack's own.
    let weakest = served.iter().map(|(_, r)| role(r.role)).min().unwrap_or(Role::Admin);
    let principal = crate::auth::principal(&parts, &ops, weakest).await?;
    let integration = store::integration_by_name(&ops.pool, &name).await?;
    let integration = syncfleet_sdk::registry::with_declared_settings(&ops.config, integration);
    if !integration.enabled {
        return Err(StoreError::IntegrationDisabled(name).into());
    }
    let Some((_, route)) = served.iter().find(|(pack, _)| *pack == integration.pack) else {
        let packs: Vec<&str> = served.iter().map(|(p, _)| *p).collect();
        return Err(ApiError::Unprocessable(format!(
            "integration `{name}` is a `{}` integration; this route serves `{}` integrations",
            integration.pack,
            packs.join("`, `")
        )));
    };
    if principal.role < role(route.role) {
        return Err(ApiError::Forbidden(format!(
            "token `{}` has role {}; this needs {}",
            principal.name,
            principal.role,
            role(route.role)
        )));
    }
    let body = match route.request {
        None => None,
        Some(_) => {
            let Json(v) = Json::<Value>::from_request(Request::from_parts(parts, body), &()).await?;
            Some(v)
        }
    };
    let cx = RouteContext {
        pool: &ops.pool,
        http: &ops.http,
        integration: &integration,
        pack_section: ops.config.pack_section(&integration.pack),
    };
    let answer = route.handler.call(cx, param.clone(), body).await?;
    if let Some(action) = route.audit {
        ops.audit(&format!("token:{}", principal.name), action, &format!("{name}/{param}"), answer.audit).await;
    }
    Ok(Json(answer.body))
}

/// Adds every pack route, with its schemas, to the OpenAPI document.
pub(super) fn document(registry: &Registry, doc: &mut OpenApi) {
    let error = || {
        ResponseBuilder::new()
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
    };
    for ((path, method), served) in grouped(registry) {
        let (_, route) = &served[0];
        let components = doc.components.get_or_insert_with(Default::default);
        let needs = served.iter().map(|(_, r)| role(r.role)).min().unwrap_or(Role::Admin);
        let mut op = OperationBuilder::new()
            .tag("integrations")
            .summary(Some(route.summary))
            .description(Some(format!("{} Needs the `{needs}` role.", route.description)))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .parameter(
                ParameterBuilder::new()
                    .name("name")
                    .parameter_in(ParameterIn::Path)
                    .required(openapi::Required::True)
                    .description(Some("Integration name"))
                    .schema(Some(openapi::ObjectBuilder::new().schema_type(openapi::schema::Type::String))),
            )
            .parameter(
                ParameterBuilder::new()
                    .name(route.param())
                    .parameter_in(ParameterIn::Path)
                    .required(openapi::Required::True)
                    .schema(Some(openapi::ObjectBuilder::new().schema_type(openapi::schema::Type::String))),
            );
        let response = &route.response;
        for named in std::iter::once(response).chain(&route.request) {
            components.schemas.insert(named.name.to_string(), named.schema.clone());
            components.schemas.extend(named.dependencies.iter().cloned());
        }
        op = op.response(
            "200",
            ResponseBuilder::new().description("OK").content(
                "application/json",
                ContentBuilder::new().schema(Some(RefOr::Ref(Ref::from_schema_name(response.name.as_ref())))).build(),
            ),
        );
        if let Some(request) = &route.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(Ref::from_schema_name(request.name.as_ref()))))
                            .build(),
                    )
                    .required(Some(openapi::Required::True))
                    .build(),
            ));
            op = op.response("400", error().description("Bad body"));
        }
        for (code, what) in [
            ("401", "No valid token"),
            ("403", "The token's role is too low"),
            ("404", "No such integration, or no such item upstream"),
            ("422", "The integration is disabled or of another pack"),
            ("502", "The upstream failed"),
        ] {
            op = op.response(code, error().description(what));
        }
        let method = match method {
            "GET" => DocMethod::Get,
            "POST" => DocMethod::Post,
            _ => DocMethod::Put,
        };
        let item = PathItem::new(method, op.build());
        match doc.paths.paths.get_mut(&path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                doc.paths.paths.insert(path, item);
            }
        }
    }
}
