//! RFC 9457 problem details. Every error the API returns is one of these, with a stable
//! `code` a client can switch on; the `detail` is for humans and may change.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::gateway::DomainError;
use crate::domain::supplier::SupplierError;

/// A problem response. Kept small (errors travel through every handler's `Result`): the
/// `type` URI is derived from `code` when serialised.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Short summary, fixed per code.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Explanation of this occurrence.
    pub detail: String,
    /// JSON pointer of the offending field, for validation problems.
    pub pointer: Option<Box<str>>,
    /// The request id (also in the `x-request-id` header and the server log).
    pub request_id: Box<str>,
    /// Seconds to wait before retrying, when it applies.
    pub retry_after: Option<u32>,
    /// The methods a path supports, sent as `Allow` with a 405 (RFC 9110 §15.5.6).
    pub allow: Option<&'static str>,
    /// Close the connection after answering (the request's body was not read to its end).
    pub close: bool,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ProblemBody {
            kind: format!("https://simgate.dev/problems/{}", self.code),
            title: self.title,
            status: self.status,
            code: self.code,
            detail: &self.detail,
            pointer: self.pointer.as_deref(),
            request_id: &self.request_id,
            retry_after: self.retry_after,
        }
        .serialize(s)
    }
}

/// The body of every error the API answers (RFC 9457 problem details), as a [`Problem`]
/// serialises.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Problem")]
pub(crate) struct ProblemBody<'a> {
    /// A URI naming the problem type, derived from `code`.
    #[serde(rename = "type")]
    kind: String,
    /// Short summary, fixed per code.
    title: &'a str,
    /// HTTP status.
    status: u16,
    /// Stable machine-readable code.
    code: &'a str,
    /// Explanation of this occurrence.
    detail: &'a str,
    /// JSON pointer of the offending field, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pointer: Option<&'a str>,
    /// The request id (also in the `x-request-id` header and the server log).
    request_id: &'a str,
    /// Seconds to wait before retrying, when it applies (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u32>,
}

impl Problem {
    /// A problem with `status`, `code` and a detail.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            title,
            status: status.as_u16(),
            code,
            detail: detail.into(),
            pointer: None,
            request_id: Box::default(),
            retry_after: None,
            allow: None,
            close: false,
        }
    }

    /// Attach a JSON pointer.
    pub fn at(mut self, pointer: impl Into<String>) -> Problem {
        self.pointer = Some(pointer.into().into_boxed_str());
        self
    }

    /// Render as a response.
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let body = serde_json::to_vec(&self).expect("problem serialises");
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.close {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Common problems.
pub mod problems {
    use super::*;

    /// 401.
    pub fn unauthenticated() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
            "send a valid API key as 'Authorization: Bearer sgk_...'",
        )
    }

    /// 404 for routes.
    pub fn no_route(path: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            format!("no resource at {path}"),
        )
    }

    /// 405, with the methods the path does support (`allow`, as in an `Allow` header).
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Problem {
        let mut p = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("{method} is not supported here; use {allow}"),
        );
        p.allow = Some(allow);
        p
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout() -> Problem {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Request body too slow",
            "the request body did not arrive in time; send it at once",
        )
    }

    /// 413.
    pub fn too_large(limit: usize) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request body too large",
            format!("request bodies are limited to {limit} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media() -> Problem {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send 'Content-Type: application/json'",
        )
    }

    /// 400 for JSON that does not parse or does not fit.
    pub fn malformed_json(detail: String, pointer: String) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "Malformed JSON body",
            detail,
        )
        .at(pointer)
    }

    /// 400 for bad query parameters.
    pub fn invalid_query(detail: String) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "Invalid query parameter",
            detail,
        )
    }
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Problem {
        use StatusCode as S;
        match e {
            DomainError::Unauthenticated => problems::unauthenticated(),
            DomainError::Forbidden => {
                Problem::new(S::FORBIDDEN, "forbidden", "Forbidden", e.to_string())
            }
            DomainError::NotFound(what) => Problem::new(
                S::NOT_FOUND,
                "not_found",
                "Not found",
                format!("no such {what}"),
            ),
            DomainError::Invalid { field, ref message } => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "Invalid field",
                message.clone(),
            )
            .at(field),
            DomainError::InsufficientBalance { .. } => Problem::new(
                S::PAYMENT_REQUIRED,
                "insufficient_balance",
                "Insufficient balance",
                format!("{e}; credit the prepaid balance and retry"),
            ),
            DomainError::Conflict { code, ref message } => {
                Problem::new(S::CONFLICT, code, "Conflict", message.clone())
            }
            DomainError::SupplierNotLoaded(_) => {
                let mut p = Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "supplier_not_loaded",
                    "Supplier not available",
                    e.to_string(),
                );
                p.retry_after = Some(30);
                p
            }
            DomainError::Supplier(ref s) => supplier_problem(s),
            // The plugin's reason is for the operator's log only: the caller is not
            // authenticated, and a reason could help forge the next attempt.
            DomainError::InboundRefused(_) => Problem::new(
                S::BAD_REQUEST,
                "inbound_rejected",
                "Inbound request rejected",
                "the plugin for this route refused the request (its signature, source or content)",
            ),
            DomainError::Store(ref s) => {
                tracing::error!(error = %s, "store failure");
                Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "Storage unavailable",
                    "the gateway could not read or write its store; try again",
                )
            }
        }
    }
}

/// A supplier failure as a problem: the code and message are the domain's (the same a
/// failed order carries); only the HTTP status is decided here.
fn supplier_problem(e: &SupplierError) -> Problem {
    use StatusCode as S;
    let (status, title) = match e {
        SupplierError::OutOfStock => (S::CONFLICT, "Out of stock"),
        SupplierError::RateLimited(_) => (S::SERVICE_UNAVAILABLE, "Supplier rate limited"),
        SupplierError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "Supplier unavailable"),
        SupplierError::Rejected(_) => (S::UNPROCESSABLE_ENTITY, "Rejected by supplier"),
        SupplierError::InvalidRequest(_) => {
            (S::UNPROCESSABLE_ENTITY, "Supplier refused the request")
        }
        SupplierError::NotSupported => (S::NOT_IMPLEMENTED, "Not supported"),
        SupplierError::Fault { .. } => (S::BAD_GATEWAY, "Supplier integration failed"),
    };
    let mut p = Problem::new(status, e.code(), title, e.public_message());
    if let SupplierError::RateLimited(secs) = e {
        p.retry_after = Some(*secs);
    }
    p
}
