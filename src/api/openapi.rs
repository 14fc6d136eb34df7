//! `GET /openapi.json`: the OpenAPI 3.1 document of the REST API, generated from the handlers,
//! their parameter types and the types their answers serialize.

use axum::Json;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "logbridge",
        description = "The activity-log audit API: every endpoint under /logs and /alerts takes \
                       a bearer key and sees only its user's logs and rules."
    ),
    paths(
        super::logs,
        super::erase,
        super::export::export,
        super::stats::stats,
        super::tail::tail,
        super::healthz,
        super::readyz,
        super::metrics,
        super::alerts::list,
        super::alerts::create,
        super::alerts::read,
        super::alerts::replace,
        super::alerts::remove,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerKeys, &EmptyIsAbsent),
    tags(
        (name = "logs", description = "Reading, summarizing, following and erasing activity logs."),
        (name = "alerts", description = "The caller's alert rules over its logs and where their alerts stand."),
        (name = "operations", description = "Health and metrics."),
    )
)]
struct Document;

/// The bearer keys of the `/logs` and `/alerts` endpoints.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key from the keys file: under /logs, `read` for GET and `delete` for \
                 DELETE; `alerts` for /alerts.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every query parameter also takes an empty value, which the API reads as an absent one (a
/// form that leaves a field blank sends `name=`).
struct EmptyIsAbsent;

impl Modify for EmptyIsAbsent {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let empty = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in != ParameterIn::Query {
                        continue;
                    }
                    if let Some(schema) = parameter.schema.take() {
                        let either = AnyOfBuilder::new().item(schema).item(empty()).build();
                        parameter.schema = Some(RefOr::T(Schema::AnyOf(either)));
                    }
                }
            }
        }
    }
}

/// The document, built once.
fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(Document::openapi)
}

/// `GET /openapi.json`.
pub async fn document() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}
