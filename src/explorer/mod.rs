//! The explorer: one web page built into the binary, served at `/`, that reads logs through the
//! REST API with the key a person types in (kept in the tab's session storage only).
//!
//! The page's files are served under a path named after their contents
//! (`/explorer/<version>/<name>`), so a browser keeps them for good and a later visit loads
//! nothing but the page itself; a binary with other files names another path.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("page/index.html");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The page's files, each at `/explorer/<version>/<name>`: its style sheet and its script, in ES
/// modules (`index.html` loads `app.js`, which imports the others), with their content types.
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

/// The page itself is asked for afresh each time: it names the files of this binary.
const REVALIDATE: &str = "no-cache";

/// A file of a version never changes.
const FOR_GOOD: &str = "public, max-age=31536000, immutable";

/// What names the files' contents: a hash of them all.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for &(name, _, body) in FILES {
        for part in [name, body] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    format!("{:016x}", hasher.digest())
});

/// The page, its files named under [`VERSION`].
static INDEX: LazyLock<String> =
    LazyLock::new(|| INDEX_HTML.replace("/explorer/", &format!("/explorer/{}/", *VERSION)));

/// The routes of the page and its files; any other name or version under `/explorer/` is not
/// found.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX.as_str(), REVALIDATE) }),
        )
        .route("/explorer/{version}/{name}", get(file))
}

async fn file(Path((version, name)): Path<(String, String)>) -> Response {
    let found = FILES.iter().find(|&&(served, _, _)| served == name);
    match found {
        Some(&(_, content_type, body)) if version == *VERSION => page(content_type, body, FOR_GOOD),
        // (during a rolling upgrade, another node may know the version: nothing keeps this)
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response(),
    }
}

fn page(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
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
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
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
    async fn a_module_is_served_for_good_under_its_version_and_nothing_else_is_found() {
        let get =
            |path: &str| router::<()>().oneshot(Request::get(path).body(Body::empty()).unwrap());
        let version = VERSION.as_str();
        assert_eq!(version.len(), 16);
        let module = get(&format!("/explorer/{version}/results.js"))
            .await
            .unwrap();
        assert_eq!(module.status(), StatusCode::OK);
        assert_eq!(module.headers()[header::CONTENT_TYPE], JAVASCRIPT);
        assert_eq!(
            module.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(module.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            module.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        for path in [
            format!("/explorer/{version}/nothing.js"),
            "/explorer/0123456789abcdef/results.js".to_owned(),
        ] {
            let missing = get(&path).await.unwrap();
            assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(missing.headers()[header::CACHE_CONTROL], "no-store");
        }
        let unversioned = get("/explorer/results.js").await.unwrap();
        assert_eq!(unversioned.status(), StatusCode::NOT_FOUND);

        // the page names this version's files, and is asked for afresh each time
        let index = get("/").await.unwrap();
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        let body = axum::body::to_bytes(index.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = std::str::from_utf8(&body).unwrap();
        let named = body.matches("/explorer/").count();
        assert_eq!(named, FILES.len(), "the style sheet and every module");
        assert_eq!(
            body.matches(&format!("/explorer/{version}/")).count(),
            named
        );
    }
}
