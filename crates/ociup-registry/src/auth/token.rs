//! Bearer tokens from a registry's token endpoint: the Docker flow (GET with basic credentials)
//! and the OAuth2 refresh-token flow (POST), cached per scope set until they expire.

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::Credential;
use crate::body::{TOKEN_BODY_CAP, read_capped, read_error_body, secs};
use crate::error::{Error, Result, display_url, excerpt};

/// A token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: String,
    pub valid_until: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// What to ask a token endpoint for.
pub(crate) struct TokenRequest<'a> {
    pub registry: &'a str,
    pub realm: &'a url::Url,
    pub service: Option<&'a str>,
    pub scopes: &'a [String],
    pub credential: &'a Credential,
    /// The client's idle timeout.
    pub idle: Duration,
}

/// Fetches a token for `scopes` from `realm`. The answer must start within the idle timeout and
/// may hold at most [`TOKEN_BODY_CAP`] bytes.
pub(crate) async fn fetch(http: &reqwest::Client, t: TokenRequest<'_>) -> Result<Token> {
    let registry = t.registry;
    let credential = t.credential;
    let auth_err = |reason: String| Error::Auth {
        registry: registry.to_owned(),
        reason,
    };
    let mut url = t.realm.clone();
    let request = match credential {
        Credential::IdentityToken(refresh) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", refresh);
            form.append_pair("client_id", "ociup");
            if let Some(s) = t.service {
                form.append_pair("service", s);
            }
            if !t.scopes.is_empty() {
                form.append_pair("scope", &t.scopes.join(" "));
            }
            http.post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.finish())
        }
        other => {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = t.service {
                    q.append_pair("service", s);
                }
                for s in t.scopes {
                    q.append_pair("scope", s);
                }
            }
            let req = http.get(url.clone());
            match other {
                Credential::Basic { username, password } => {
                    req.basic_auth(username, Some(password))
                }
                _ => req,
            }
        }
    };
    let shown = display_url(&url);
    let started = Instant::now();
    let resp = match tokio::time::timeout(t.idle, request.header(ACCEPT, "application/json").send())
        .await
    {
        Err(_) => {
            return Err(auth_err(format!(
                "token endpoint {shown}: timed out: no answer within {}",
                secs(t.idle)
            )));
        }
        Ok(r) => r.map_err(|e| {
            // reqwest's text names the URL with its query; the cause chain is enough.
            let mut why = String::new();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why.push_str(": ");
                why.push_str(&s.to_string());
                src = s.source();
            }
            auth_err(format!("token endpoint {shown}: request failed{why}"))
        })?,
    };
    let status = resp.status();
    if !status.is_success() {
        // An OAuth2 endpoint says why (`invalid_grant`: an identity token that expired or was
        // revoked); a Docker one may say so in the registry error format. Only these short
        // fields are shown, cleaned, from at most the first 64 KiB of the body.
        let body = read_error_body(resp, t.idle).await;
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(short);
                match (field("error"), field("error_description")) {
                    (Some(e), Some(d)) => Some(format!(": {e}: {d}")),
                    (Some(e), None) => Some(format!(": {e}")),
                    _ => None,
                }
            })
            .unwrap_or_default();
        let refused = matches!(status.as_u16(), 401 | 403);
        let note = match credential {
            Credential::Anonymous => {
                " (no credentials were found for this registry: log in, or give --username)"
                    .to_owned()
            }
            Credential::Basic { username, .. } if refused => {
                format!(" (the password of user {} was refused)", short(username))
            }
            Credential::IdentityToken(_) if refused => {
                " (the identity token was refused: it may have expired or been revoked; log in \
                 again)"
                    .to_owned()
            }
            _ => " (check the credentials)".to_owned(),
        };
        return Err(auth_err(format!(
            "token endpoint {shown} answered {status}{why}{note}"
        )));
    }
    let body = read_capped(resp, TOKEN_BODY_CAP, t.idle, "GET", &shown, "token answer")
        .await
        .map_err(|e| auth_err(e.to_string()))?;
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        auth_err(format!(
            "the token endpoint's answer is not a token: {}",
            excerpt(&e.to_string(), 200)
        ))
    })?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| auth_err("the token endpoint's answer has no token".into()))?;
    // Tokens live 60 s unless told otherwise (Docker's token spec); stop using one a little early.
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(10, 86_400 * 365));
    Ok(Token {
        value,
        valid_until: started + lifetime - Duration::from_secs(5),
    })
}

/// At most 200 characters of a message from a server, on one line, cleaned.
fn short(s: &str) -> String {
    excerpt(s, 200)
}
