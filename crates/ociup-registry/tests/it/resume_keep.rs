//! Uploads keep only the last few MiB they sent (not a whole blob or chunk) to send again.
//! Against the real Distribution server, whose upload is cut in the middle of its body by a
//! proxy that resets the client's connection (as a broken network would): Distribution then
//! forgets the upload, so a blob kept whole starts again and arrives, and a larger one fails
//! clearly with nothing committed. Resuming from a registry's `Range` is in `hostile` (a fake
//! registry that answers one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ociup_core::Digest;
use ociup_core::store::Store;
use ociup_registry::{Client, ClientOptions, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{AuthMode, RegistryOptions, TestRegistry};

/// A proxy to `upstream` that, once, drops both connections (the client's with unread bytes,
/// so it is reset) when `after` bytes have gone upstream since a `PATCH`/`PUT` request began.
struct CuttingProxy {
    host: String,
    /// Bytes of the cut request that had gone upstream when it was cut (0: not cut yet).
    cut_at: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn cutting_proxy(upstream: String, after: u64) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_at = Arc::new(AtomicU64::new(0));
    let seen_cut = Arc::clone(&cut_at);
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (cut, cut_at, upstream) = (Arc::clone(&cut), Arc::clone(&cut_at), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut counted: Option<u64> = None;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if counted.is_none() {
                            let marker = [&b"PATCH /v2/"[..], &b"PUT /v2/"[..]]
                                .iter()
                                .find_map(|m| chunk.windows(m.len()).position(|w| w == *m));
                            // Counted from the request line on.
                            counted = marker.map(|at| (n - at) as u64);
                        } else if let Some(c) = counted.as_mut() {
                            *c += n as u64;
                        }
                        if let Some(c) = counted
                            && c >= after
                            && !cut.swap(true, Ordering::SeqCst)
                        {
                            cut_at.store(c, Ordering::SeqCst);
                            // Both halves dropped with this task: the client's with bytes
                            // unread, which resets it.
                            return;
                        }
                        if sw.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                };
                // Whichever side ends first ends the connection (and the cut drops both).
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    CuttingProxy {
        host,
        cut_at: seen_cut,
        task,
    }
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

/// `len` bytes pushed through a proxy cutting the upload after `after` bytes of its request
/// have gone upstream: the push's outcome, the registry and where its log stood before.
async fn push_cut(
    name: &str,
    len: usize,
    after: u64,
) -> (ociup_core::Result<()>, TestRegistry, usize, Vec<u8>) {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let proxy = cutting_proxy(reg.host(), after).await;
    let client = Client::new(ClientOptions {
        insecure: vec![proxy.host.clone()],
        ..ClientOptions::default()
    })
    .unwrap();
    let repo = client.repository(&Reference::parse(&format!("{}/{name}", proxy.host)).unwrap());
    let bytes = data(len, len as u32);
    let digest = Digest::sha256(&bytes);
    let from = reg.completed();
    let pushed = repo.put_new_blob(&digest, len as u64, &bytes[..]).await;
    let cut_at = proxy.cut_at.load(Ordering::SeqCst);
    assert!(cut_at >= after, "the proxy never cut the upload");
    (pushed, reg, from, bytes)
}

/// The registry's blob `name`@`bytes`, read straight from it (past the proxy).
async fn served(reg: &TestRegistry, name: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let direct = Client::new(ClientOptions {
        insecure: vec![reg.host()],
        ..ClientOptions::default()
    })
    .unwrap();
    let repo = direct.repository(&Reference::parse(&format!("{}/{name}", reg.host())).unwrap());
    let digest = Digest::sha256(bytes);
    repo.blob_size(&digest).await.unwrap()?;
    let mut back = Vec::new();
    repo.get_blob(&digest, bytes.len() as u64)
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    Some(back)
}

/// A blob of a few MiB goes in the one PUT that commits it; cut in the middle, Distribution
/// forgets the upload (its status is a 404), and the blob, kept whole, starts again in a new
/// upload and arrives.
#[tokio::test]
async fn a_put_cut_in_the_middle_starts_again_from_the_bytes_kept() {
    let (pushed, reg, from, bytes) = push_cut("cut/put", 3 << 20, 3 << 19).await;
    pushed.unwrap_or_else(|e| panic!("the cut upload did not start again: {e}\n{}", reg.log()));
    let calls: Vec<(String, String)> = reg
        .completed_since(from)
        .into_iter()
        .filter(|c| c.uri.contains("/blobs/"))
        .map(|c| (c.method, c.status))
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(m, s)| ((*m).to_owned(), (*s).to_owned()))
            .collect()
    };
    // The cut PUT is logged or not, and when: left out. Then the first POST, the status (404),
    // the check that nothing was committed, and the new upload.
    let calls: Vec<(String, String)> = calls
        .into_iter()
        .filter(|(m, s)| m != "PUT" || s == "201")
        .collect();
    assert_eq!(
        calls,
        pairs(&[
            ("POST", "202"),
            ("GET", "404"),
            ("HEAD", "404"),
            ("POST", "202"),
            ("PUT", "201")
        ]),
    );
    assert!(served(&reg, "cut/put", &bytes).await == Some(bytes.clone()));
}

/// A blob over the chunk size streams in one PATCH; cut deep into it, Distribution forgets the
/// upload, and with only the last few MiB kept the push fails clearly: nothing is committed,
/// and a new push sends it whole.
#[tokio::test]
async fn a_patch_cut_deep_into_a_large_blob_fails_clearly_and_commits_nothing() {
    let (pushed, reg, _, bytes) = push_cut("cut/patch", 24 << 20, 14 << 20).await;
    let err = pushed.unwrap_err().to_string();
    assert!(
        err.contains("cannot resume") && err.contains("no longer knows"),
        "{err}"
    );
    assert!(served(&reg, "cut/patch", &bytes).await.is_none());
}

/// A blob of a few MiB (over one piece, within the chunk size) goes in the one PUT that
/// commits it, streamed: a POST and a PUT, no PATCH. A source that does not hash to the digest
/// fails with the mismatch before its last piece goes, so the registry commits nothing.
#[tokio::test]
async fn a_medium_blob_goes_in_one_streamed_put_and_a_wrong_source_commits_nothing() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let client = Client::new(ClientOptions {
        insecure: vec![reg.host()],
        ..ClientOptions::default()
    })
    .unwrap();
    let repo = client.repository(&Reference::parse(&format!("{}/medium/one", reg.host())).unwrap());
    let bytes = data(3 << 20, 7);
    let digest = Digest::sha256(&bytes);
    let from = reg.completed();
    repo.put_new_blob(&digest, bytes.len() as u64, &bytes[..])
        .await
        .unwrap();
    let calls: Vec<(String, String)> = reg
        .completed_since(from)
        .into_iter()
        .map(|c| (c.method, c.status))
        .collect();
    assert_eq!(
        calls,
        [("POST".into(), "202".into()), ("PUT".into(), "201".into())],
        "{}",
        reg.log()
    );
    assert_eq!(repo.blob_size(&digest).await.unwrap(), Some(3 << 20));

    let mut wrong = data(3 << 20, 8);
    let wrong_digest = Digest::sha256(&wrong);
    wrong[1 << 20] ^= 1;
    let err = repo
        .put_new_blob(&wrong_digest, wrong.len() as u64, &wrong[..])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ociup_core::Error::DigestMismatch { .. }),
        "{err}"
    );
    assert_eq!(repo.blob_size(&wrong_digest).await.unwrap(), None);
    assert_eq!(repo.blob_size(&Digest::sha256(&wrong)).await.unwrap(), None);
}
