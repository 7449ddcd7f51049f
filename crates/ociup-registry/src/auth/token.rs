//! Bearer tokens from a registry's token endpoint: the Docker flow (GET with basic credentials)
//! and the OAuth2 refresh-token flow (POST), cached per scope set until they expire.

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::Credential;
use crate::error::{Error, Result};

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

/// Fetches a token for `scopes` from `realm`.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    credential: &Credential,
) -> Result<Token> {
    let auth_err = |reason: String| Error::Auth {
        registry: registry.to_owned(),
        reason,
    };
    let mut url = url::Url::parse(realm)
        .map_err(|e| auth_err(format!("the token realm {realm:?} is not a URL: {e}")))?;
    let request = match credential {
        Credential::IdentityToken(refresh) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", refresh);
            form.append_pair("client_id", "ociup");
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
            http.post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.finish())
        }
        other => {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in scopes {
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
    let started = Instant::now();
    let resp = request
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            auth_err(format!(
                "token endpoint {}: {e}",
                crate::error::display_url(&url)
            ))
        })?;
    let status = resp.status();
    if !status.is_success() {
        // An OAuth2 endpoint says why (`invalid_grant`: an identity token that expired or was
        // revoked); a Docker one may say so in the registry error format. Token endpoints do not
        // echo credentials back, and only these short fields are shown.
        let body = resp.bytes().await.unwrap_or_default();
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
        return Err(auth_err(format!(
            "token endpoint {} answered {status}{why}{}",
            crate::error::display_url(&url),
            match credential {
                Credential::Anonymous => " (no credentials were configured for this registry)",
                _ => " (check the credentials)",
            }
        )));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| auth_err(format!("reading the token: {e}")))?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| auth_err(format!("the token endpoint's answer is not a token: {e}")))?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| auth_err("the token endpoint's answer has no token".into()))?;
    // Tokens live 60 s unless told otherwise (Docker's token spec); stop using one a little early.
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(10));
    Ok(Token {
        value,
        valid_until: started + lifetime - Duration::from_secs(5),
    })
}

/// At most 200 characters of a message from a server, on one line.
fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}
