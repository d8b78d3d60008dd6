//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes
//! and the types' `ToSchema` derives, and served at `/v1/openapi.json`. The router is built
//! from the same handler list ([`routes`]), so a route cannot exist without its documentation.

use std::sync::Arc;

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::control::AppState;
use crate::control::problem::PROBLEM_JSON;
use crate::control::routes::*;

/// The body of every error answer (RFC 9457 problem details).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ProblemDetails {
    /// `urn:dooz:problem:<slug>`, e.g. `urn:dooz:problem:not-found`.
    #[schema(rename = "type")]
    type_: String,
    /// A short summary of the problem type.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong in this occurrence, and what to do.
    detail: String,
}

/// The error answers any operation may give, each `application/problem+json`.
pub(crate) struct Problems;

impl IntoResponses for Problems {
    fn responses() -> std::collections::BTreeMap<String, RefOr<openapi::response::Response>> {
        let problem = || {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name(
                    "ProblemDetails",
                ))))
                .build()
        };
        [
            ("400", "The request is malformed (bad JSON, path or query)."),
            ("401", "No credential, or one the server does not know."),
            ("403", "The credential may not do this."),
            ("404", "No such resource (or not the caller's to see)."),
            ("405", "The path does not take this method."),
            ("409", "The request conflicts with the resource's state."),
            ("413", "The body is too large."),
            ("415", "The body is not `application/json`."),
            (
                "422",
                "The values are not acceptable, or an `Idempotency-Key` was reused.",
            ),
            ("429", "Too many requests for this key; see `Retry-After`."),
            ("503", "A backing store is unavailable; try again."),
        ]
        .into_iter()
        .map(|(code, what)| {
            let response = ResponseBuilder::new()
                .description(what)
                .content(PROBLEM_JSON, problem())
                .build();
            (code.to_owned(), RefOr::T(response))
        })
        .collect()
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator admin token, or a tenant API key (`dzk_...`).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dooz Sync control plane",
        description = "Tenants, accounts, API keys, devices, plans, subscriptions, webhooks and \
                       audit of a Dooz Sync server. Errors are RFC 9457 problem details; lists \
                       use cursor pagination; POSTs take an `Idempotency-Key`. See \
                       docs/CONTROL-PLANE.md."
    ),
    modifiers(&Security),
    security(("bearer" = [])),
    components(schemas(ProblemDetails))
)]
struct ApiDoc;

/// Every route of the API with its documentation: the router and the document come from this
/// one list.
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(get_api_key, delete_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(create_account, list_accounts))
        .routes(routes!(get_account, delete_account))
        .routes(routes!(get_usage))
        .routes(routes!(create_enrolment_token))
        .routes(routes!(list_devices))
        .routes(routes!(get_device, rename_device))
        .routes(routes!(revoke_device))
        .routes(routes!(create_plan, list_plans))
        .routes(routes!(get_plan, update_plan, delete_plan))
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(get_subscription, update_subscription))
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(redeliver))
        .routes(routes!(
            crate::control::storage::get_storage,
            crate::control::storage::put_storage,
            crate::control::storage::delete_storage
        ))
        .routes(routes!(crate::control::usage::tenant_usage))
        .routes(routes!(crate::control::usage::all_usage))
        .routes(routes!(crate::control::usage::billing_events))
        .routes(routes!(
            crate::control::usage::get_tenant_billing,
            crate::control::usage::put_tenant_billing
        ))
        .routes(routes!(crate::control::usage::invoice_preview))
        .routes(routes!(crate::control::usage::entitlements))
        .routes(routes!(crate::control::usage::analytics))
        .routes(routes!(list_audit))
        .routes(routes!(export))
}

/// The document as served (built once).
pub(crate) fn document() -> openapi::OpenApi {
    let (_, mut api) = routes().split_for_parts();
    api.paths.paths.insert(
        "/v1/openapi.json".to_owned(),
        openapi::PathItem::new(
            openapi::HttpMethod::Get,
            openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .operation_id(Some("openapi"))
                .tag("meta")
                .security(openapi::security::SecurityRequirement::default())
                .responses(
                    openapi::ResponsesBuilder::new()
                        .response(
                            "200",
                            ResponseBuilder::new()
                                .description("The OpenAPI 3.1 document")
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(openapi::ObjectBuilder::new()))
                                        .build(),
                                ),
                        )
                        .build(),
                ),
        ),
    );
    api
}

/// `GET /v1/openapi.json`.
pub(crate) async fn serve(document: Arc<String>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document.as_str().to_owned(),
    )
}

/// The `(METHOD, path)` pairs a document lists, sorted.
pub(crate) fn operations(api: &openapi::OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &api.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if op.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out.sort();
    out
}
