//! The explorer: one web page built into the binary, served at `/`, that reads logs through the
//! REST API with the key a person types in (kept in the tab's session storage only).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("page/index.html");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The page's files, each at `/explorer/<name>`: its style sheet and its script, in ES modules
/// (`index.html` loads `app.js`, which imports the others), with their content types.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("page/app.css"),
    ),
    ("app.js", JAVASCRIPT, include_str!("page/app.js")),
    ("alerts.js", JAVASCRIPT, include_str!("page/alerts.js")),
    ("api.js", JAVASCRIPT, include_str!("page/api.js")),
    ("call.js", JAVASCRIPT, include_str!("page/call.js")),
    ("dom.js", JAVASCRIPT, include_str!("page/dom.js")),
    ("errors.js", JAVASCRIPT, include_str!("page/errors.js")),
    ("export.js", JAVASCRIPT, include_str!("page/export.js")),
    ("filters.js", JAVASCRIPT, include_str!("page/filters.js")),
    ("format.js", JAVASCRIPT, include_str!("page/format.js")),
    ("key.js", JAVASCRIPT, include_str!("page/key.js")),
    ("live.js", JAVASCRIPT, include_str!("page/live.js")),
    ("results.js", JAVASCRIPT, include_str!("page/results.js")),
    ("rows.js", JAVASCRIPT, include_str!("page/rows.js")),
    ("state.js", JAVASCRIPT, include_str!("page/state.js")),
    ("stats.js", JAVASCRIPT, include_str!("page/stats.js")),
];

/// The page may load its own scripts and style sheet and talk to its own origin, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The routes of the page and its files; any other name under `/explorer/` is not found.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let index = Router::new().route(
        "/",
        get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
    );
    FILES
        .iter()
        .fold(index, |router, &(name, content_type, body)| {
            router.route(
                &format!("/explorer/{name}"),
                get(move || async move { page(content_type, body) }),
            )
        })
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // the files change with the binary: revalidate rather than keep a stale page
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn served(name: &str) -> bool {
        FILES.iter().any(|&(served, _, _)| served == name)
    }

    #[test]
    fn every_file_of_the_page_and_every_module_imported_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/explorer/page");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "index.html" || served(&name),
                "{name} is not served"
            );
        }
        let mut imports = 0;
        for &(name, _, body) in FILES {
            for import in body.split(" from './").skip(1) {
                let module = &import[..import.find('\'').unwrap()];
                assert!(
                    served(module),
                    "{name} imports {module}, which is not served"
                );
                imports += 1;
            }
        }
        assert!(imports > 0, "the modules import each other");
    }

    #[test]
    fn the_page_preloads_every_module_but_the_one_it_runs() {
        let preloaded: Vec<&str> = INDEX_HTML
            .split("<link rel=\"modulepreload\" href=\"/explorer/")
            .skip(1)
            .map(|link| &link[..link.find('"').unwrap()])
            .collect();
        let modules: Vec<&str> = FILES
            .iter()
            .filter(|&&(name, content_type, _)| content_type == JAVASCRIPT && name != "app.js")
            .map(|&(name, _, _)| name)
            .collect();
        assert_eq!(preloaded, modules);
    }

    #[tokio::test]
    async fn a_module_is_served_as_javascript_under_the_policy_and_another_name_is_not_found() {
        let get =
            |path: &str| router::<()>().oneshot(Request::get(path).body(Body::empty()).unwrap());
        let module = get("/explorer/results.js").await.unwrap();
        assert_eq!(module.status(), StatusCode::OK);
        assert_eq!(module.headers()[header::CONTENT_TYPE], JAVASCRIPT);
        assert_eq!(
            module.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(module.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let unknown = get("/explorer/nothing.js").await.unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }
}
