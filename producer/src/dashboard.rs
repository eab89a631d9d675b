//! The operator dashboard served at `/`: one HTML page and its scripts, stylesheet and icon,
//! compiled into the binary (`producer/assets/`), so the producer serves every asset itself: no
//! CDN, nothing fetched at run time, no build step.
//!
//! The page and its assets need no token; the data does. The page asks the operator for a bearer
//! token, keeps it in the tab's `sessionStorage`, sends it with every `/api` call, and shows only
//! the actions the token's role (`GET /api/whoami`) may take. The API checks the role again.
//!
//! The assets may be cached but are revalidated on every load (`no-cache`: nothing in them is
//! secret); the API's answers are never stored (`no-store`, [`crate::api`]).

use axum::{
    Router,
    http::{HeaderName, HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

use crate::ops::Ops;

/// A file of `producer/assets/` and the path it is served under.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset =
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../assets/index.html") };

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        path: "/assets/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/api.js"),
    },
    Asset {
        path: "/assets/dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dom.js"),
    },
    Asset {
        path: "/assets/runs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/runs.js"),
    },
    Asset {
        path: "/assets/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/style.css"),
    },
    Asset { path: "/assets/favicon.svg", content_type: "image/svg+xml", body: include_str!("../assets/favicon.svg") },
];

/// Scripts, styles and API calls only from the producer itself; the page is never framed. The
/// bearer token lives in `sessionStorage`, so no script from elsewhere may ever run here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<Ops> {
    ASSETS.iter().fold(Router::new(), |router, asset| router.route(asset.path, get(move || serve(asset))))
}

async fn serve(asset: &'static Asset) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        // Revalidate on every load, so a new producer version is picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        // `frame-ancestors 'none'` for browsers that predate it.
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    (headers, asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/assets/…` path the page or a script names.
    fn referenced(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (quote, prefix) in [('"', "\"/assets/"), ('\'', "'./")] {
            let mut rest = text;
            while let Some(i) = rest.find(prefix) {
                let tail = &rest[i + prefix.len()..];
                let end = tail.find(quote).unwrap_or(tail.len());
                out.push(format!("/assets/{}", &tail[..end]));
                rest = &tail[end..];
            }
        }
        out
    }

    #[test]
    fn every_referenced_asset_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS {
            for path in referenced(asset.body) {
                assert!(served.contains(&path.as_str()), "{} names {path}, which is not served", asset.path);
            }
        }
        assert!(referenced(INDEX.body).contains(&"/assets/app.js".to_owned()));
        assert!(referenced(ASSETS[1].body).contains(&"/assets/runs.js".to_owned()));
    }

    #[test]
    fn no_asset_loads_anything_from_elsewhere() {
        for asset in ASSETS {
            let body = asset.body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            for needle in ["://", "//cdn", "@import", "url("] {
                assert!(
                    !body.contains(needle),
                    "{} contains `{needle}`: every asset must come from the producer",
                    asset.path
                );
            }
        }
    }
}
