//! Stable error codes. They are part of the API: clients branch on them and
//! tests pin them, so a code is never renamed or reused for another meaning.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($name:literal, $status:literal, $retry:literal), )*) => {
        /// Every error code certd answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// All codes, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// The HTTP status that goes with the code.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Whether repeating the same request later may succeed
            /// (a client's retry-with-backoff decision).
            pub fn is_transient(self) -> bool {
                match self { $(ErrorCode::$variant => $retry,)* }
            }

            /// Parses a wire code.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s { $($name => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    /// The request is malformed: not JSON, wrong types, unknown fields, bad values.
    BadRequest = ("bad_request", 400, false),
    /// The body is larger than the configured limit.
    BodyTooLarge = ("body_too_large", 413, false),
    /// The CSR cannot be parsed, has the wrong PEM label, or its signature
    /// (proof of possession) does not verify.
    BadCsr = ("bad_csr", 400, false),
    /// The subscriber key is too weak or of a kind the profile refuses
    /// (RSA < 2048, exponent ≠ 65537, unsupported curve, the certifier's own key).
    WeakKey = ("weak_key", 400, false),
    /// The key type is sound but not allowed by this profile.
    KeyNotPermitted = ("key_not_permitted", 400, false),
    /// The requested validity is unusable (in the past, malformed).
    BadValidity = ("bad_validity", 400, false),
    /// The RA's credential is not permitted to do this at all.
    NotAuthorized = ("not_authorized", 403, false),
    /// The RA may not use this profile, or the profile does not exist.
    ProfileNotPermitted = ("profile_not_permitted", 403, false),
    /// The RA may not use this certifier.
    CertifierNotPermitted = ("certifier_not_permitted", 403, false),
    /// A subject or SAN value is outside the RA's namespaces or the profile's rules.
    NameNotPermitted = ("name_not_permitted", 403, false),
    /// The profile requires approval evidence and none was sent.
    ApprovalRequired = ("approval_required", 403, false),
    /// The approval evidence does not satisfy the profile: too few or
    /// repeated approvers, the requester approving, a malformed identifier
    /// or time, a name no accepted and fresh validation covers.
    ApprovalInsufficient = ("approval_insufficient", 403, false),
    /// The subscriber key was revoked for keyCompromise: certd never
    /// certifies it again. Generate a new key.
    KeyBlocked = ("key_blocked", 403, false),
    /// No such certifier.
    UnknownCertifier = ("unknown_certifier", 404, false),
    /// No such certificate, or not one this RA may see.
    NotFound = ("not_found", 404, false),
    /// The same `request_id` was used with a different body.
    Conflict = ("conflict", 409, false),
    /// The certificate is already revoked.
    AlreadyRevoked = ("already_revoked", 409, false),
    /// The certificate the request would produce fails pre-issuance lint.
    LintFailed = ("lint_failed", 422, false),
    /// The RA is over its rate limit.
    RateLimited = ("rate_limited", 429, true),
    /// The certifier is locked: an operator must run `certd activate`.
    CertifierLocked = ("certifier_locked", 503, true),
    /// The certifier's token is unavailable; certd retries by itself.
    CertifierUnavailable = ("certifier_unavailable", 503, true),
    /// The ledger cannot be written (for example, the disk is full).
    LedgerUnavailable = ("ledger_unavailable", 503, true),
    /// The audit log cannot be written; nothing is done without its record.
    AuditUnavailable = ("audit_unavailable", 503, true),
    /// The same request is being processed right now; retry shortly.
    InProgress = ("in_progress", 409, true),
    /// Unknown endpoint.
    NoSuchEndpoint = ("no_such_endpoint", 404, false),
    /// Wrong HTTP method for the endpoint.
    MethodNotAllowed = ("method_not_allowed", 405, false),
    /// The body is not `application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415, false),
    /// A fault inside certd; the message says what happened.
    Internal = ("internal", 500, true),
    /// The request (headers and body) did not arrive within
    /// `api.request_timeout_secs`; send it again, faster.
    RequestTimeout = ("request_timeout", 408, true),
    /// The certifier's token returned a signature that does not verify
    /// under the certifier's key; nothing was released, the serial is
    /// burned. Repeated, it means a faulty HSM: tell the CA operators.
    CertifierFault = ("certifier_fault", 503, true),
    /// The disk holding certd's ledger and audit log is (nearly) full:
    /// issuance is paused until space is freed; revocation goes on.
    StorageFull = ("storage_full", 507, true),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiErrorWire,
}

/// The inner object of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorWire {
    /// Stable code.
    pub code: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// An error answer from certd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ApiErrorWire {
                code: self.code.as_str().to_string(),
                message: self.message.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire names are the contract: this list changes only by adding.
    #[test]
    fn codes_are_pinned() {
        let pinned = [
            ("bad_request", 400),
            ("body_too_large", 413),
            ("bad_csr", 400),
            ("weak_key", 400),
            ("key_not_permitted", 400),
            ("bad_validity", 400),
            ("not_authorized", 403),
            ("profile_not_permitted", 403),
            ("certifier_not_permitted", 403),
            ("name_not_permitted", 403),
            ("approval_required", 403),
            ("approval_insufficient", 403),
            ("key_blocked", 403),
            ("unknown_certifier", 404),
            ("not_found", 404),
            ("conflict", 409),
            ("already_revoked", 409),
            ("lint_failed", 422),
            ("rate_limited", 429),
            ("certifier_locked", 503),
            ("certifier_unavailable", 503),
            ("ledger_unavailable", 503),
            ("audit_unavailable", 503),
            ("in_progress", 409),
            ("no_such_endpoint", 404),
            ("method_not_allowed", 405),
            ("unsupported_media_type", 415),
            ("internal", 500),
            ("request_timeout", 408),
            ("certifier_fault", 503),
            ("storage_full", 507),
        ];
        assert_eq!(ErrorCode::ALL.len(), pinned.len());
        for (code, (name, status)) in ErrorCode::ALL.iter().zip(pinned) {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.http_status(), status, "{name}");
            assert_eq!(ErrorCode::parse(name), Some(*code));
        }
    }
}
