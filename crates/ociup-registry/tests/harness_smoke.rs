//! Smoke tests of the registry harness in `support/`: every set-up answers as it should, checked
//! with plain reqwest requests (not with ociup's client).

mod support;

use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::{LOCATION, WWW_AUTHENTICATE};
use support::{AuthMode, RegistryOptions, TestRegistry};

/// A small blob and its digest (the registry checks the digest on upload).
const BLOB: &[u8] = b"hello";
const BLOB_DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// A reqwest client that ignores proxy settings and trusts `ca` besides the system roots.
fn http(ca: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .user_agent("harness-smoke");
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("the harness's CA file is readable");
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("the CA is PEM"));
    }
    builder.build().expect("a reqwest client builds")
}

fn v2(reg: &TestRegistry) -> String {
    format!("{}/v2/", reg.base_url())
}

/// The value of `key="..."` in a `WWW-Authenticate` challenge.
fn challenge_param(challenge: &str, key: &str) -> String {
    let start = challenge
        .find(&format!("{key}=\""))
        .unwrap_or_else(|| panic!("no {key} in {challenge}"))
        + key.len()
        + 2;
    let len = challenge[start..]
        .find('"')
        .expect("the parameter's closing quote");
    challenge[start..start + len].to_owned()
}

fn header(response: &reqwest::Response, name: &reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {response:?}"))
        .to_str()
        .expect("an ASCII header")
        .to_owned()
}

/// A token from `realm` for `scope`, with the given basic credentials or anonymously.
async fn fetch_token(
    realm: &str,
    service: &str,
    scope: &str,
    creds: Option<&(String, String)>,
) -> String {
    let url = url::Url::parse_with_params(realm, [("service", service), ("scope", scope)])
        .expect("a valid realm");
    let mut request = http(None).get(url);
    if let Some((user, password)) = creds {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.expect("the token endpoint answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("a token body"))
            .expect("a JSON token body");
    assert_eq!(body["token"], body["access_token"]);
    assert!(
        body["expires_in"].as_u64().is_some_and(|s| s > 60),
        "{body}"
    );
    assert!(
        body["issued_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );
    body["token"].as_str().expect("a string token").to_owned()
}

#[tokio::test]
async fn without_auth_it_answers_and_stop_ends_it() {
    let mut reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    assert!(reg.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        (reg.credentials(), reg.ca_pem(), reg.token_requests()),
        (None, None, 0)
    );
    let response = http(None).get(v2(&reg)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Both kinds of request line reach the log.
    let log = reg.log();
    assert!(log.contains("\"GET /v2/ HTTP/1.1\" 200"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("msg=\"response completed\"")
            && l.contains("http.request.method=GET ")
            && l.contains("http.request.uri=/v2/ ")
            && l.contains("http.request.useragent=harness-smoke ")),
        "{log}"
    );

    assert_eq!(
        reg.requests("GET", "/v2/"),
        2,
        "the readiness probe and ours: {log}"
    );
    assert_eq!(reg.requests("PUT", ""), 0);

    let (pid, port) = (reg.pid(), reg.port());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    reg.stop();
    reg.stop();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the registry process is gone"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port}"
    );
    assert!(http(None).get(v2(&reg)).send().await.is_err());
    assert!(
        reg.log().contains("listening on"),
        "the log outlives the process"
    );
}

#[tokio::test]
async fn basic_auth_wants_the_harness_credentials() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let (user, password) = reg.credentials().expect("basic auth has credentials");
    let c = http(None);
    let response = c.get(v2(&reg)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&response, &WWW_AUTHENTICATE);
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let response = c
        .get(v2(&reg))
        .basic_auth(&user, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = c
        .get(v2(&reg))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn bearer_tokens_from_the_harness_endpoint() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: false,
    });
    let creds = reg.credentials().expect("token auth has credentials");
    let c = http(None);
    let response = c.get(v2(&reg)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&response, &WWW_AUTHENTICATE);
    assert!(challenge.starts_with("Bearer realm=\""), "{challenge}");
    let (realm, service) = (
        challenge_param(&challenge, "realm"),
        challenge_param(&challenge, "service"),
    );
    assert_eq!(Some(&realm), reg.token_realm().as_ref());

    let scope = "repository:test/x:pull,push";
    let token = fetch_token(&realm, &service, scope, Some(&creds)).await;
    let response = c.get(v2(&reg)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A monolithic upload: POST, then PUT with the digest.
    let uploads = format!("{}/v2/test/x/blobs/uploads/", reg.base_url());
    let response = c.post(&uploads).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = url::Url::parse(&reg.base_url())
        .unwrap()
        .join(&header(&response, &LOCATION))
        .expect("a valid Location");
    let mut put = location.clone();
    put.query_pairs_mut().append_pair("digest", BLOB_DIGEST);
    let response = c
        .put(put)
        .bearer_auth(&token)
        .header("Content-Type", "application/octet-stream")
        .body(BLOB)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let blob_url = format!("{}/v2/test/x/blobs/{BLOB_DIGEST}", reg.base_url());
    let response = c.get(&blob_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap(), BLOB);

    // Anonymous: a token that may pull but not push.
    let anonymous = fetch_token(&realm, &service, scope, None).await;
    let response = c
        .get(&blob_url)
        .bearer_auth(&anonymous)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "anonymous may pull");
    let response = c
        .post(&uploads)
        .bearer_auth(&anonymous)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ),
        "anonymous push: {}",
        response.status()
    );
    assert!(header(&response, &WWW_AUTHENTICATE).contains("insufficient_scope"));

    // Wrong credentials get no token at all.
    let url =
        url::Url::parse_with_params(&realm, [("service", service.as_str()), ("scope", scope)])
            .unwrap();
    let response = c
        .get(url)
        .basic_auth(&creds.0, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(
        reg.requests("POST", "/v2/test/x/blobs/uploads/"),
        2,
        "{}",
        reg.log()
    );
    assert_eq!(reg.requests("PUT", "/v2/test/x/blobs/uploads/"), 1);
    assert_eq!(reg.token_requests(), 3);
    assert_eq!(reg.token_scopes(), [scope, scope, scope]);
    assert!(
        !reg.log().contains(&creds.1),
        "the password is never logged"
    );
}

#[tokio::test]
async fn tls_with_the_harness_ca_and_not_without() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: true,
    });
    assert!(reg.base_url().starts_with("https://127.0.0.1:"));
    let ca = reg.ca_pem().expect("TLS has a CA");
    let response = http(Some(&ca)).get(v2(&reg)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let err = http(None)
        .get(v2(&reg))
        .send()
        .await
        .expect_err("the CA is not a system root");
    assert!(err.is_connect(), "{err:?}");
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    assert!(
        chain
            .iter()
            .any(|m| m.to_lowercase().contains("certificate")),
        "{chain:?}"
    );
}

#[tokio::test]
async fn tls_with_basic_auth() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: true,
    });
    let (user, password) = reg.credentials().expect("basic auth has credentials");
    let c = http(reg.ca_pem().as_deref());
    assert_eq!(
        c.get(v2(&reg)).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let response = c
        .get(v2(&reg))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn a_panicking_test_still_stops_its_registry() {
    let mut pid = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reg = TestRegistry::start(RegistryOptions::default());
        pid = Some(reg.pid());
        panic!("a failing test (expected)");
    }));
    assert!(outcome.is_err());
    let pid = pid.expect("the registry started");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the registry process is gone"
    );
}
