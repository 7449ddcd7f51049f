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
        /// The `detail` of each error, beside its code: the JSON text, or the string itself
        /// when it is one (empty when there is none).
        details: Vec<String>,
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
    /// An error of `ociup-core` (a layout, a document, a digest), so that one error type can be
    /// `?`-ed through whatever an embedder calls. Converting it back gives the original.
    #[error(transparent)]
    Core(Box<ociup_core::Error>),
}

impl From<ociup_core::Error> for Error {
    /// Unwraps a registry error carried by [`ociup_core::Error::Backend`]; wraps anything else.
    fn from(e: ociup_core::Error) -> Self {
        match e {
            ociup_core::Error::Backend(b) => match b.downcast::<Error>() {
                Ok(mine) => *mine,
                Err(other) => Error::Core(Box::new(ociup_core::Error::Backend(other))),
            },
            other => Error::Core(Box::new(other)),
        }
    }
}

/// At most `max` characters of text from a server, for an error message: control characters
/// (terminal escapes among them) dropped, whitespace runs made one space, an ellipsis where it
/// was cut.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    let one_line = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > max {
        let mut cut: String = one_line.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

fn codes_suffix(codes: &[String]) -> String {
    // Each code once, at most 10 of them: a registry may name hundreds of blobs, each with
    // the same code.
    let mut shown: Vec<&str> = Vec::new();
    for c in codes {
        if !shown.contains(&c.as_str()) {
            shown.push(c);
        }
    }
    if shown.is_empty() {
        String::new()
    } else if shown.len() > 10 {
        format!(" ({}, ...)", shown[..10].join(", "))
    } else {
        format!(" ({})", shown.join(", "))
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

    /// The blobs the registry named as unknown (`MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`) in the
    /// details of its errors. Registries put the digest there as a string (Distribution) or
    /// inside an object; any digest in a detail counts.
    pub fn unknown_blobs(&self) -> Vec<ociup_core::Digest> {
        let Error::Http { codes, details, .. } = self else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (code, detail) in codes.iter().zip(details) {
            if code != "MANIFEST_BLOB_UNKNOWN" && code != "BLOB_UNKNOWN" {
                continue;
            }
            for d in digests_in(detail) {
                if !found.contains(&d) {
                    found.push(d);
                }
            }
        }
        found
    }
}

/// Every well-formed digest (`sha256:<64 hex>`, `sha512:<128 hex>`) in a text.
fn digests_in(text: &str) -> Vec<ociup_core::Digest> {
    let mut out = Vec::new();
    for (alg, len) in [("sha256:", 64), ("sha512:", 128)] {
        let mut rest = text;
        while let Some(at) = rest.find(alg) {
            let tail = &rest[at + alg.len()..];
            let hex = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
            if hex == len
                && let Ok(d) = format!("{alg}{}", &tail[..len]).parse()
            {
                out.push(d);
            }
            rest = tail;
        }
    }
    out
}

impl From<Error> for ociup_core::Error {
    /// Unwraps an [`Error::Core`]; carries anything else in [`ociup_core::Error::Backend`].
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => *c,
            other => ociup_core::Error::Backend(Box::new(other)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn http(codes: &[&str], details: &[&str]) -> Error {
        Error::Http {
            method: "PUT".into(),
            url: "http://127.0.0.1/v2/x/manifests/t".into(),
            status: 400,
            codes: codes.iter().map(|c| (*c).to_owned()).collect(),
            details: details.iter().map(|d| (*d).to_owned()).collect(),
            message: String::new(),
        }
    }

    #[test]
    fn errors_convert_both_ways_without_nesting() {
        // An embedder's function returning the registry's error can `?` a core error, and back.
        fn registry_side() -> Result<()> {
            Err(ociup_core::Error::InvalidChange { reason: "x".into() })?;
            Ok(())
        }
        fn core_side() -> ociup_core::Result<()> {
            registry_side()?;
            Ok(())
        }
        assert!(matches!(
            core_side(),
            Err(ociup_core::Error::InvalidChange { .. })
        ));
        let reg = http(&["DENIED"], &[""]);
        let there: ociup_core::Error = reg.into();
        let back: Error = there.into();
        assert_eq!(back.status(), Some(400), "{back:?}");
        assert_eq!(back.codes(), ["DENIED"]);
    }

    #[test]
    fn excerpts_are_short_and_clean() {
        assert_eq!(excerpt("a\n\tb \x1b[31mred\x1b[0m", 100), "a b [31mred[0m");
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long, 10), format!("{}…", "x".repeat(10)));
    }

    #[test]
    fn unknown_blobs_are_read_from_the_details_of_blob_codes_only() {
        let a = ociup_core::Digest::sha256(b"a");
        let b = ociup_core::Digest::sha256(b"b");
        let e = http(
            &[
                "MANIFEST_BLOB_UNKNOWN",
                "MANIFEST_BLOB_UNKNOWN",
                "DENIED",
                "MANIFEST_BLOB_UNKNOWN",
            ],
            &[
                &a.to_string(),
                &format!(r#"{{"digest":"{b}"}}"#),
                &format!("{}", ociup_core::Digest::sha256(b"not a blob")),
                &a.to_string(),
            ],
        );
        assert_eq!(e.unknown_blobs(), vec![a.clone(), b]);
        // Too short or too long to be a digest, or no detail: nothing.
        let short = format!("sha256:{}", &a.to_string()[7..70]);
        let long = format!("{a}0");
        let e = http(&["MANIFEST_BLOB_UNKNOWN"; 3], &[&short, &long, ""]);
        assert_eq!(e.unknown_blobs(), Vec::new());
    }
}
