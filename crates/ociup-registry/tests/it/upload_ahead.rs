//! Uploads opened before their blob is known (`Store::open_upload`, as a rebase does for its new
//! config while it reads): used, cancelled, gone before use, or too large for one request, against
//! the real Distribution server.

use ociup_core::Digest;
use ociup_core::store::{OpenUpload, Store};
use ociup_registry::{Client, ClientOptions, Reference, Repository};

use crate::support::{AuthMode, RegistryOptions, TestRegistry};

fn repo(c: &Client, reg: &TestRegistry, name: &str) -> Repository {
    c.repository(&Reference::parse(&format!("{}/{name}", reg.host())).unwrap())
}

/// (method, status) of the registry's answers on upload URLs past the first `from` answers.
fn upload_requests(reg: &TestRegistry, from: usize) -> Vec<(String, String)> {
    reg.completed_since(from)
        .into_iter()
        .filter(|c| c.uri.contains("/blobs/uploads/"))
        .map(|c| (c.method, c.status))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(m, s)| ((*m).to_owned(), (*s).to_owned()))
        .collect()
}

#[tokio::test]
async fn an_upload_opened_ahead_is_used_cancelled_or_started_again() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let c = Client::new(ClientOptions {
        insecure: vec![reg.host()],
        // Blobs over 1 KiB do not fit one request.
        chunk_size: 1024,
        ..ClientOptions::default()
    })
    .unwrap();
    let r = repo(&c, &reg, "team/app");
    let blob = |b: &[u8]| (Digest::sha256(b), b.len() as u64);

    // Used: the POST opened it, one PUT carries the bytes.
    let from = reg.completed();
    let (d, size) = blob(b"{\"config\":1}");
    let u = r
        .open_upload()
        .await
        .unwrap()
        .expect("a registry opens uploads");
    r.put_blob_into(u, &d, size, &b"{\"config\":1}"[..])
        .await
        .unwrap();
    assert!(r.blob_exists(&d).await.unwrap());
    assert_eq!(
        upload_requests(&reg, from),
        pairs(&[("POST", "202"), ("PUT", "201")])
    );

    // Cancelled: its DELETE, and the registry no longer knows it.
    let from = reg.completed();
    let u = r.open_upload().await.unwrap().unwrap();
    r.cancel_upload(u.clone()).await.unwrap();
    let status = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&u.location)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404, "the cancelled upload is gone");
    assert_eq!(
        upload_requests(&reg, from),
        pairs(&[("POST", "202"), ("DELETE", "204"), ("GET", "404")])
    );

    // Gone before it is used (here: cancelled): started again, the blob still arrives.
    let from = reg.completed();
    let (d, size) = blob(b"{\"config\":2}");
    r.put_blob_into(u, &d, size, &b"{\"config\":2}"[..])
        .await
        .unwrap();
    assert!(r.blob_exists(&d).await.unwrap());
    assert_eq!(
        upload_requests(&reg, from),
        pairs(&[("PUT", "404"), ("POST", "202"), ("PUT", "201")])
    );

    // Too large for one request: cancelled, then streamed as any new blob is.
    let from = reg.completed();
    let big = vec![7u8; 3000];
    let (d, size) = blob(&big);
    let u = r.open_upload().await.unwrap().unwrap();
    r.put_blob_into(u, &d, size, &big[..]).await.unwrap();
    assert!(r.blob_exists(&d).await.unwrap());
    assert_eq!(
        upload_requests(&reg, from),
        pairs(&[
            ("POST", "202"),
            ("DELETE", "204"),
            ("POST", "202"),
            ("PATCH", "202"),
            ("PUT", "201"),
        ])
    );

    // A location that is no URL is refused before anything is sent.
    let from = reg.completed();
    let bad = OpenUpload {
        location: "not a url".into(),
    };
    assert!(r.cancel_upload(bad).await.is_err());
    assert_eq!(reg.completed(), from);
}
