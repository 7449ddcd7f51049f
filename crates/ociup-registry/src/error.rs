//! The one error type of `ociup-registry`.

/// What can go wrong talking to a registry. HTTP errors keep the status, the URL (never with
/// credentials, and without its query, which may hold signed tokens) and the registry's own error
/// codes; [`Error::is_retryable`] says whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference that does not parse.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: {status}{}{}", codes_suffix(.codes), message_suffix(.message))]
    Http {
        /// The request method.
        method: String,
        /// The URL, without query.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The registry's error codes (`MANIFEST_UNKNOWN`, `DENIED`, ...).
        codes: Vec<String>,
        /// The registry's messages, or the start of a non-JSON body.
        message: String,
    },
    /// The request did not get an answer (connection refused or reset, timeout, TLS failure).
    #[error("{method} {url}: {reason}")]
    Transport {
        /// The request method.
        method: String,
        /// The URL, without query.
        url: String,
        /// What happened, with the cause chain.
        reason: String,
        /// Whether the failure is of a kind that may pass (connection reset, timeout).
        retryable: bool,
    },
    /// An answer that breaks the distribution spec (missing or bad `Location`, wrong digest
    /// header, a body that is not what was asked for).
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL, without query.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Authentication failed or could not be attempted.
    #[error("authenticating to {registry}: {reason}")]
    Auth {
        /// The registry.
        registry: String,
        /// What went wrong (never the credentials themselves).
        reason: String,
    },
    /// Configuration that cannot be used (a CA file that does not parse, a bad option).
    #[error("{0}")]
    Config(String),
}

fn codes_suffix(codes: &[String]) -> String {
    if codes.is_empty() {
        String::new()
    } else {
        format!(" ({})", codes.join(", "))
    }
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    /// Whether trying the same request again may succeed: connection failures, 408, 429 and
    /// 5xx except 501 and 505.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Http { status, .. } => {
                matches!(status, 408 | 429) || (*status >= 500 && !matches!(status, 501 | 505))
            }
            Error::Transport { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The HTTP status, for [`Error::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry's error codes, for [`Error::Http`].
    pub fn codes(&self) -> &[String] {
        match self {
            Error::Http { codes, .. } => codes,
            _ => &[],
        }
    }
}

impl From<Error> for ociup_core::Error {
    fn from(e: Error) -> Self {
        ociup_core::Error::Backend(Box::new(e))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A URL for messages: no credentials, no query, no fragment.
pub(crate) fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}
