//! The status page: one self-contained HTML file (no external assets) that polls
//! `/admin/upstreams` and offers drain/undrain buttons.

use bytes::Bytes;
use http::{StatusCode, header};

use super::Reply;

const STATUS_PAGE: &str = include_str!("status.html");

pub(super) fn status_page() -> Reply {
    let mut resp = super::text(StatusCode::OK, Bytes::from_static(STATUS_PAGE.as_bytes()));
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}
