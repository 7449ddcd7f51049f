//! `ociup serve --tls-cert/--tls-key` (HTTPS with rustls) and `--client-ca` (client
//! certificates), with the CLI as its client over https:// (`--server-ca`, `--client-cert`) and
//! curl: certificates made by openssl here, read again when their files change; a handshake
//! that never finishes is cut off while the service keeps serving.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{fixtures, json, ok_at};

/// Runs openssl in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A CA `NAME.pem`/`NAME.key` in `dir`.
pub(crate) fn ca(dir: &Path, name: &str) -> PathBuf {
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
             [dn]\nCN = {name}\n[ext]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        ),
    )
    .unwrap();
    let (cnf, key, pem) = (
        format!("{name}.cnf"),
        format!("{name}.key"),
        format!("{name}.pem"),
    );
    let mut args = vec![
        "req", "-x509", "-config", &cnf, "-keyout", &key, "-out", &pem, "-days", "2",
    ];
    args.extend(EC);
    openssl(dir, &args);
    dir.join(pem)
}

/// A certificate `NAME.pem`/`NAME.key` for subject CN `cn`, signed by the CA `ca` of `dir`:
/// a server's (for 127.0.0.1) or a client's.
pub(crate) fn leaf(dir: &Path, ca: &str, name: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"),
    )
    .unwrap();
    let usage = if server {
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n"
    } else {
        "extendedKeyUsage = clientAuth\n"
    };
    std::fs::write(
        dir.join(format!("{name}-ext.cnf")),
        format!(
            "[ext]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\n{usage}"
        ),
    )
    .unwrap();
    let (cnf, ext, key, csr, pem) = (
        format!("{name}.cnf"),
        format!("{name}-ext.cnf"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let mut args = vec![
        "req", "-new", "-config", &cnf, "-keyout", &key, "-out", &csr,
    ];
    args.extend(EC);
    openssl(dir, &args);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "7",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-extensions",
            "ext",
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// A running `ociup serve` over TLS; killed on drop.
pub(crate) struct Https {
    child: Child,
    pub(crate) addr: String,
    log: PathBuf,
}

impl Https {
    /// `ociup serve --listen LISTEN ARGS` in `dir`: the https:// address it prints.
    pub(crate) fn start(dir: &Path, listen: &str, args: &[&str]) -> Https {
        let log = dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .arg("serve")
            .args(["--listen", listen])
            .args(args)
            .current_dir(dir)
            .env_remove("OCIUP_SERVER")
            .env_remove("OCIUP_SIGNING_KEY")
            .env_remove("OCIUP_USERNAME")
            .env_remove("OCIUP_PASSWORD")
            .env_remove("KUBECONFIG")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("ociup serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("ociup serve: listening on https://")
            .unwrap_or_else(|| {
                panic!(
                    "no https address printed ({line:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Https { child, addr, log }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl over https: its exit code, the HTTP status (0 when none), the body.
pub(crate) fn curl(
    url: &str,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    token: Option<&str>,
    method: &str,
    body: Option<&[u8]>,
) -> (i32, u16, Vec<u8>) {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-X", method, "--cacert"])
        .arg(ca)
        .arg("-o")
        .arg(out_file.path())
        .args(["-w", "%{http_code}"]);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs (scripts/test.sh installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.unwrap_or_default()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        out.status.code().unwrap_or(-1),
        status,
        std::fs::read(out_file.path()).unwrap_or_default(),
    )
}

/// Runs ociup as a client of `url` in an empty home with no registry credentials: exit code,
/// stdout, stderr. `env` adds OCIUP_TOKEN, OCIUP_SERVER_CA and the like.
pub(crate) fn client(
    dir: &Path,
    url: &str,
    env: &[(&str, String)],
    args: &[&str],
) -> (i32, String, String) {
    let home = dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
    cmd.args(args)
        .current_dir(&home)
        .env_clear()
        .env("HOME", &home)
        .env("OCIUP_SERVER", url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The base fixture copied as `base:latest` in `dir`, and the nick `app` on it whose versions
/// go to the layout `images` (a layout catalog `catalog`).
fn layout_nick(d: &Path) {
    let base = fixtures().join("base").canonicalize().unwrap();
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v1", base.display()),
            "oci:base:latest",
        ],
    );
    std::fs::write(d.join("app.conf"), "mode = test\n").unwrap();
    let dir = d.display().to_string();
    ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            &format!("oci:{dir}/base:latest"),
            "--to",
            &format!("oci:{dir}/images"),
            "--add",
            "app.conf:/etc/app.conf",
        ],
    );
}

#[test]
fn https_with_client_certificates_reloaded_files_and_a_stalled_handshake_cut_off() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    layout_nick(d);
    let ca1 = ca(d, "ca1");
    let ca2 = ca(d, "ca2");
    let (server_cert, server_key) = leaf(d, "ca1", "server", "127.0.0.1", true);
    let (alice, alice_key) = leaf(d, "ca1", "alice", "alice-cert", false);
    let (nobody, nobody_key) = leaf(d, "ca1", "nobody", "nobody", false);
    let (forged, forged_key) = leaf(d, "ca2", "forged", "alice-cert", false);
    let (server2_cert, server2_key) = leaf(d, "ca2", "server2", "127.0.0.1", true);
    let token = ok_at(
        d,
        &[
            "token",
            "create",
            "bob",
            "--role",
            "requester",
            "--file",
            "tokens.json",
        ],
    )
    .trim()
    .to_owned();
    let (cert_arg, key_arg) = (d.join("tls.crt"), d.join("tls.key"));
    std::fs::copy(&server_cert, &cert_arg).unwrap();
    std::fs::copy(&server_key, &key_arg).unwrap();
    let dir = d.display().to_string();
    let args = [
        "--tokens",
        "tokens.json",
        "--catalog",
        "oci:catalog",
        "--allow-read",
        &format!("oci:{dir}/base"),
        "--allow-write",
        "oci:images",
        "--allow-write",
        "oci:catalog",
        "--tls-cert",
        "tls.crt",
        "--tls-key",
        "tls.key",
        "--client-ca",
        "ca1.pem",
        "--cert-role",
        "alice-cert=requester",
        "--header-timeout",
        "1",
    ];

    // With TLS, an address other machines reach needs no --insecure-listen.
    drop(Https::start(d, "0.0.0.0:0", &args));
    let s = Https::start(d, "127.0.0.1:0", &args);
    let url = s.url();

    // The CLI over https, trusting the CA, with a token: the same output as locally.
    let path = |p: &Path| p.display().to_string();
    let with_token = [
        ("OCIUP_SERVER_CA", path(&ca1)),
        ("OCIUP_TOKEN", token.clone()),
    ];
    for a in [
        &["resolve", "app"][..],
        &["status", "app", "--json"],
        &["history", "app"],
    ] {
        let (code, out, err) = client(d, &url, &with_token, a);
        assert_eq!(code, 0, "{a:?}: {err}");
        assert_eq!(out, ok_at(d, a), "{a:?}");
    }
    // Not trusting it: refused, nothing sent.
    let (code, _, err) = client(
        d,
        &url,
        &[("OCIUP_TOKEN", token.clone())],
        &["resolve", "app"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("reaching the service"), "{err}");
    // A client certificate given a role, and no token at all.
    let (code, out, err) = client(
        d,
        &url,
        &[
            ("OCIUP_SERVER_CA", path(&ca1)),
            ("OCIUP_CLIENT_CERT", path(&alice)),
            ("OCIUP_CLIENT_KEY", path(&alice_key)),
        ],
        &["resolve", "app"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, ok_at(d, &["resolve", "app"]));
    // The same certificate toward a plain http:// address is refused before anything is sent
    // (it would reach the service with no credentials at all).
    let plain = url.replacen("https://", "http://", 1);
    let (code, out, err) = client(
        d,
        &plain,
        &[
            ("OCIUP_CLIENT_CERT", path(&alice)),
            ("OCIUP_CLIENT_KEY", path(&alice_key)),
        ],
        &["resolve", "app"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("only mean something over https://"), "{err}");
    let resolve = format!("{url}/v1/nicks/app/resolve");
    // curl: no certificate, no token: 401; a certificate of the CA whose name has no role:
    // 403 naming it; a certificate of another CA: the handshake fails.
    let (_, status, body) = curl(&resolve, &ca1, None, None, "POST", None);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (_, status, body) = curl(
        &resolve,
        &ca1,
        Some((&nobody, &nobody_key)),
        None,
        "POST",
        None,
    );
    let body = json(&String::from_utf8_lossy(&body));
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert!(
        body["message"].as_str().unwrap().contains("CN=nobody"),
        "{body}"
    );
    let (code, status, _) = curl(
        &resolve,
        &ca1,
        Some((&forged, &forged_key)),
        None,
        "POST",
        None,
    );
    assert!(
        code != 0 && status == 0,
        "a certificate of another CA: curl {code}, HTTP {status}"
    );
    // A bearer token beside a certificate without a role: the token names the caller.
    let (_, status, _) = curl(
        &resolve,
        &ca1,
        Some((&nobody, &nobody_key)),
        Some(&token),
        "POST",
        None,
    );
    assert_eq!(status, 200);

    // Connections that never finish their handshake (nothing sent, or half a ClientHello) are
    // closed after --header-timeout; the service answers others meanwhile.
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            if i == 1 {
                use std::io::Write;
                c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            }
            c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            c
        })
        .collect();
    let (_, status, _) = curl(&format!("{url}/healthz"), &ca1, None, None, "GET", None);
    assert_eq!(status, 200, "served while handshakes stall");
    for c in &mut stalled {
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the stalled connection is closed, not answered");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "stalled handshakes closed after {took:?}, --header-timeout is 1 s"
    );
    assert!(
        s.log().contains("TLS handshake not finished"),
        "{}",
        s.log()
    );

    // The certificate and key replaced by ones of another CA: the next connection is served
    // with them (trusting ca2 works, ca1 no longer does).
    for (from, to) in [(&server2_key, &key_arg), (&server2_cert, &cert_arg)] {
        let tmp = d.join("swap.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    let (code, _, err) = client(
        d,
        &url,
        &[
            ("OCIUP_SERVER_CA", path(&ca2)),
            ("OCIUP_TOKEN", token.clone()),
        ],
        &["resolve", "app"],
    );
    assert_eq!(code, 0, "the new certificate is served: {err}\n{}", s.log());
    let (code, _, _) = client(d, &url, &with_token, &["resolve", "app"]);
    assert_ne!(code, 0, "the old CA no longer verifies the service");
    assert!(s.log().contains("read again"), "{}", s.log());
}
