//! Where requests and credentials may go: no request follows a registry to a link-local or cloud
//! metadata address, and no credential crosses the network in clear text.

use std::net::{IpAddr, Ipv6Addr};

use url::Url;

use crate::reference::is_loopback_host;

/// Host names of cloud metadata services, refused as redirect targets like their addresses.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// AWS's IPv6 metadata address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why a registry may not send a request to `url` (a redirect, an upload `Location`, a `Link`),
/// or `None` when it may: link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata
/// services answer) and the metadata services' own addresses and names are refused.
pub(crate) fn refused_target(url: &Url) -> Option<String> {
    let why = |what: &str| {
        Some(format!(
            "refusing to follow the registry to {} ({what})",
            url.host_str().unwrap_or("")
        ))
    };
    match url.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if METADATA_NAMES.contains(&d.as_str()) {
                return why("a cloud metadata service");
            }
            None
        }
        url::Host::Ipv4(ip) => refused_ip(IpAddr::V4(ip)).and_then(why),
        url::Host::Ipv6(ip) => refused_ip(IpAddr::V6(ip)).and_then(why),
    }
}

/// What a client does with one redirect.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RedirectStep {
    /// Followed by reqwest, which drops `Authorization` when the host or port changes.
    Follow,
    /// Not followed here: the 3xx is the answer (the plain-HTTP client's hop to HTTPS, which
    /// [`crate::Client`] makes itself with the HTTPS client and without credentials).
    Stop,
    /// Refused with this reason.
    Refuse(String),
}

/// Redirects followed in a row at most.
const MAX_REDIRECTS: usize = 10;

/// The redirect policy of both HTTP clients (`plain`: the one for `http://`, which loads no
/// root certificate). reqwest keeps `Authorization` across a redirect that changes only the
/// scheme, so no scheme change is ever followed by reqwest: a hop from HTTPS to plain HTTP is
/// refused (a downgrade, and on the same host and port it would carry the credentials in clear
/// text), and one from plain HTTP to HTTPS is stopped and made without credentials. With the
/// scheme fixed, reqwest's dropping of `Authorization` on a host or port change covers the
/// rest of the origin. Link-local and metadata targets are refused.
pub(crate) fn redirect_step(previous: &[Url], next: &Url, plain: bool) -> RedirectStep {
    if let Some(why) = refused_target(next) {
        return RedirectStep::Refuse(why);
    }
    let scheme = next.scheme();
    if scheme != "http" && scheme != "https" {
        return RedirectStep::Refuse(format!(
            "refusing a redirect to a {scheme}: URL (only http and https are followed)"
        ));
    }
    if scheme == "http" && previous.iter().any(|u| u.scheme() == "https") {
        return RedirectStep::Refuse(format!(
            "refusing a redirect from HTTPS to plain HTTP ({})",
            next.host_str().unwrap_or("")
        ));
    }
    if plain && scheme == "https" {
        return RedirectStep::Stop;
    }
    if previous.len() >= MAX_REDIRECTS {
        return if plain {
            RedirectStep::Stop
        } else {
            RedirectStep::Refuse(format!("more than {MAX_REDIRECTS} redirects"))
        };
    }
    RedirectStep::Follow
}

fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("a link-local address, where cloud metadata services answer")
        }
        IpAddr::V6(v6) if v6 == AWS_METADATA_V6 => Some("a cloud metadata service"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("a link-local address"),
        _ => None,
    }
}

/// Whether credentials may be sent to `url`: over HTTPS always; over plain HTTP only when the
/// URL's own host is loopback or named insecure (`host` or `host:port`), whatever registry sent
/// ociup there.
pub(crate) fn credentials_may_go(url: &Url, insecure: &[String]) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let bare = |s: &str| s.trim_start_matches('[').replace(']', "");
    is_loopback_host(&authority)
        || insecure
            .iter()
            .any(|i| bare(i) == bare(&authority) || bare(i) == bare(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_and_link_local_targets_are_refused() {
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "https://169.254.0.1:8443/x",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.GOOGLE.INTERNAL./x",
        ] {
            let why = refused_target(&url(bad));
            assert!(why.is_some(), "{bad} was allowed");
        }
        for good in [
            "https://storage.example/bucket/blob",
            "http://127.0.0.1:5000/v2/",
            "http://[::1]/x",
            "https://10.0.0.1/x",
            "http://[fd00:ec2::253]/x",
            "http://169.253.0.1/x",
        ] {
            assert_eq!(refused_target(&url(good)), None, "{good}");
        }
    }

    /// Whether reqwest keeps `Authorization` on a redirect from `prev` to `next` (its own rule:
    /// dropped when the host or the port, known defaults included, changes).
    fn reqwest_keeps_authorization(prev: &Url, next: &Url) -> bool {
        prev.host_str() == next.host_str()
            && prev.port_or_known_default() == next.port_or_known_default()
    }

    #[test]
    fn no_redirect_carries_credentials_to_another_origin_or_downgrades() {
        let urls = [
            "https://reg.example/v2/x/blobs/d",
            "https://reg.example:443/v2/x/blobs/d",
            "https://reg.example:5000/v2/x/blobs/d",
            "http://reg.example:5000/v2/x/blobs/d",
            "http://reg.example:443/v2/x/blobs/d",
            "http://reg.example/v2/x/blobs/d",
            "https://storage.example/bucket/d",
            "http://storage.example/bucket/d",
            "http://127.0.0.1:5000/v2/x/blobs/d",
            "https://127.0.0.1:5000/v2/x/blobs/d",
            "ftp://reg.example/d",
        ];
        let mut followed = 0;
        for prev in urls.map(url) {
            for next in urls.map(url) {
                for plain in [true, false] {
                    // Each client only starts from its own scheme.
                    if (prev.scheme() == "http") != plain || prev.scheme() == "ftp" {
                        continue;
                    }
                    let step = redirect_step(std::slice::from_ref(&prev), &next, plain);
                    if step != RedirectStep::Follow {
                        continue;
                    }
                    followed += 1;
                    // A followed redirect keeps the scheme: reqwest's host-and-port rule is
                    // then the whole origin.
                    assert_eq!(prev.scheme(), next.scheme(), "{prev} -> {next} followed");
                    if reqwest_keeps_authorization(&prev, &next) {
                        assert_eq!(
                            prev.origin(),
                            next.origin(),
                            "{prev} -> {next}: credentials kept to another origin"
                        );
                    }
                }
            }
        }
        assert!(followed > 10, "{followed}");
        // The case reqwest itself gets wrong: same host and port, HTTPS to HTTP.
        let https = url("https://reg.example:5000/v2/x/blobs/d");
        let http = url("http://reg.example:5000/v2/x/blobs/d");
        assert!(reqwest_keeps_authorization(&https, &http));
        assert!(matches!(
            redirect_step(std::slice::from_ref(&https), &http, false),
            RedirectStep::Refuse(why) if why.contains("HTTPS to plain HTTP")
        ));
        // Further down a chain too.
        let other = url("https://cdn.example/d");
        assert!(matches!(
            redirect_step(&[https.clone(), other], &url("http://cdn.example/d"), false),
            RedirectStep::Refuse(_)
        ));
        // Plain HTTP to HTTPS: stopped, made by the client without credentials.
        assert_eq!(
            redirect_step(std::slice::from_ref(&http), &https, true),
            RedirectStep::Stop
        );
        assert_eq!(
            redirect_step(
                std::slice::from_ref(&https),
                &url("https://cdn.example/d"),
                false
            ),
            RedirectStep::Follow
        );
        assert!(matches!(
            redirect_step(&vec![https.clone(); 10], &https, false),
            RedirectStep::Refuse(_)
        ));
        assert!(matches!(
            redirect_step(
                std::slice::from_ref(&https),
                &url("http://169.254.169.254/"),
                false
            ),
            RedirectStep::Refuse(_)
        ));
    }

    #[test]
    fn plain_http_credentials_only_to_loopback_or_named_hosts() {
        let insecure = vec!["registry.lan:5000".to_owned(), "auth.lan".to_owned()];
        assert!(credentials_may_go(&url("https://auth.example/token"), &[]));
        assert!(credentials_may_go(&url("http://127.0.0.1:9/token"), &[]));
        assert!(credentials_may_go(&url("http://localhost/token"), &[]));
        assert!(credentials_may_go(&url("http://[::1]:9/token"), &[]));
        assert!(credentials_may_go(
            &url("http://auth.lan:8080/t"),
            &insecure
        ));
        assert!(credentials_may_go(
            &url("http://registry.lan:5000/t"),
            &insecure
        ));
        // The registry being insecure (or loopback) does not make its realm so.
        assert!(!credentials_may_go(
            &url("http://auth.example/token"),
            &insecure
        ));
        assert!(!credentials_may_go(
            &url("http://registry.lan:5001/t"),
            &insecure
        ));
    }
}
