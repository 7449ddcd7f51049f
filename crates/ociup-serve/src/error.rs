//! Errors as the API answers them: a status and JSON `{"code": …, "message": …}`, where `code`
//! is one of a fixed set (listed in the OpenAPI document) that clients may match on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// 400: a malformed body, parameter or nick.
    InvalidRequest,
    /// 401: no token, or one the service does not know.
    Unauthorized,
    /// 403: the token's role may not do this.
    Forbidden,
    /// 403: the recipe reads or writes outside the service's allowlist.
    OutsideAllowlist,
    /// 404: no such route.
    NotFound,
    /// 404: no nick of that name in the catalog.
    UnknownNick,
    /// 404: no run of that id on this replica and no Job of it in the cluster (yet): it may be
    /// pending on another replica (ask again), have failed there, or be someone else's.
    RunUnknown,
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 409: the nick cannot do this now (unregistered, no version yet, registered already).
    Conflict,
    /// 429: the token has made more requests than `--rate-limit` allows; retry after
    /// `Retry-After`.
    RateLimited,
    /// 413: the body is larger than the service takes.
    PayloadTooLarge,
    /// 415: the body is not of the type the route takes.
    UnsupportedMediaType,
    /// 422: a recipe or upload that is well-formed but invalid.
    InvalidRecipe,
    /// 422: verification failed (signature, files, layers).
    VerificationFailed,
    /// 502: the nick's base could not be reached.
    BaseUnreachable,
    /// 502: a registry or layout failed.
    StoreError,
    /// 503: as many regenerations as allowed are running; retry after `Retry-After`.
    Busy,
    /// 503: the service has no Kubernetes cluster to create runs on.
    NoCluster,
    /// 503: the service is not ready (the catalog cannot be read).
    NotReady,
    /// 503: the tokens file cannot be read as it is now, so no token is accepted.
    TokensUnreadable,
    /// 504: the request took longer than the service allows (work it started goes on).
    Timeout,
    /// 500: a fault of the service.
    Internal,
}

impl Code {
    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden | Code::OutsideAllowlist => StatusCode::FORBIDDEN,
            Code::NotFound | Code::UnknownNick | Code::RunUnknown => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidRecipe | Code::VerificationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Code::BaseUnreachable | Code::StoreError => StatusCode::BAD_GATEWAY,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Busy | Code::NoCluster | Code::NotReady | Code::TokensUnreadable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait before retrying (with `busy`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A library error, its code chosen by kind; `context` says what was being done.
    pub fn from_core(context: &str, e: ociup_core::Error) -> ApiError {
        use ociup_core::Error as E;
        let code = match &e {
            E::Backend(b) if b.is::<ociup_core::managed::manager::BaseUnreachable>() => {
                Code::BaseUnreachable
            }
            E::Backend(b) if b.is::<crate::allow::Refused>() => Code::OutsideAllowlist,
            E::Backend(_) | E::Io { .. } | E::BlobNotFound { .. } | E::TagNotFound { .. } => {
                Code::StoreError
            }
            E::InvalidChange { reason } if reason.contains("no managed image is registered") => {
                Code::UnknownNick
            }
            E::InvalidChange { .. } => Code::Conflict,
            E::LayerSource { .. } | E::LayerPath { .. } | E::InvalidReference { .. } => {
                Code::InvalidRecipe
            }
            _ => Code::StoreError,
        };
        ApiError::new(code, format!("{context}: {}", chain(&e)))
    }
}

/// An error and its causes, `: `-separated (as anyhow's `{:#}`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.code.status(), Json(&self)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.code == Code::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ociup\""),
            );
        }
        resp
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> ApiError {
        rejection(r.status(), r.body_text())
    }
}

fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        _ => Code::InvalidRequest,
    };
    ApiError::new(code, text)
}
