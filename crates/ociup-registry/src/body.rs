//! Reading answers: every body that is not a blob is read up to a cap, and every body is watched
//! for a registry that goes silent or trickles.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// The most of an error body read (the rest is never fetched).
pub(crate) const ERROR_BODY_CAP: usize = 64 * 1024;

/// The most of a token endpoint's answer read.
pub(crate) const TOKEN_BODY_CAP: u64 = 1024 * 1024;

/// Fewer bytes than this within one idle timeout count as silence: a registry trickling a byte a
/// second is as stuck as one that sends nothing.
pub(crate) const MIN_BYTES_PER_WINDOW: u64 = 1024;

/// How long the answer to a request may take to start: the idle timeout, plus a second for every
/// 16 KiB of request body (sent meanwhile).
pub(crate) fn answer_deadline(idle: Duration, body_len: usize) -> Duration {
    idle + Duration::from_secs((body_len / (16 * 1024)) as u64)
}

/// Watches a body as it arrives: each window of `idle` must bring at least
/// [`MIN_BYTES_PER_WINDOW`] (or the end).
#[derive(Debug)]
pub(crate) struct Watchdog {
    idle: Duration,
    window_start: Instant,
    window_bytes: u64,
}

/// What a watched read gave.
pub(crate) enum Watched<T> {
    /// The next item of the stream (or its end).
    Item(Option<T>),
    /// Too little arrived within the idle timeout.
    Stalled,
}

impl Watchdog {
    pub(crate) fn new(idle: Duration) -> Self {
        Watchdog {
            idle,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// The next chunk of `stream`, or [`Watched::Stalled`].
    pub(crate) async fn next<S, E>(
        &mut self,
        stream: &mut S,
    ) -> Watched<std::result::Result<Bytes, E>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    {
        loop {
            let deadline = self.window_start + self.idle;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(item) => {
                    if let Some(Ok(chunk)) = &item {
                        self.window_bytes += chunk.len() as u64;
                        if Instant::now() >= deadline {
                            // The window is over: it must have brought enough, this chunk
                            // included.
                            if self.window_bytes < MIN_BYTES_PER_WINDOW {
                                return Watched::Stalled;
                            }
                            self.roll();
                        }
                    }
                    return Watched::Item(item);
                }
                Err(_) if self.window_bytes >= MIN_BYTES_PER_WINDOW => self.roll(),
                Err(_) => return Watched::Stalled,
            }
        }
    }

    fn roll(&mut self) {
        self.window_start = Instant::now();
        self.window_bytes = 0;
    }

    /// Starts counting afresh (a new request for the rest of a body).
    pub(crate) fn reset(&mut self) {
        self.roll();
    }

    /// The message for a stall.
    pub(crate) fn stalled_reason(&self) -> String {
        stalled_reason(self.idle)
    }
}

pub(crate) fn stalled_reason(idle: Duration) -> String {
    format!(
        "timed out: the registry sent less than {MIN_BYTES_PER_WINDOW} bytes in {}",
        secs(idle)
    )
}

/// The idle timeout as people write it: `60 s`, `0.25 s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s} s")
    }
}

/// Reads a whole body of at most `limit` bytes: an answer announcing more, or sending more, is
/// refused without reading the rest. `what` names the body in the error (`manifest`, `token`).
pub(crate) async fn read_capped(
    resp: reqwest::Response,
    limit: u64,
    idle: Duration,
    method: &str,
    url: &str,
    what: &str,
) -> Result<Bytes> {
    let too_large = |n: String| Error::Protocol {
        url: url.to_owned(),
        reason: format!("the {what} is larger than the {limit} bytes ociup reads ({n})"),
    };
    if let Some(len) = resp.content_length()
        && len > limit
    {
        return Err(too_large(format!("{len} bytes announced")));
    }
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    let mut watch = Watchdog::new(idle);
    loop {
        match watch.next(&mut stream).await {
            Watched::Stalled => {
                return Err(Error::Transport {
                    method: method.to_owned(),
                    url: url.to_owned(),
                    reason: format!("reading the {what}: {}", watch.stalled_reason()),
                    retryable: true,
                });
            }
            Watched::Item(None) => return Ok(out.freeze()),
            Watched::Item(Some(Err(e))) => {
                return Err(Error::Transport {
                    method: method.to_owned(),
                    url: url.to_owned(),
                    reason: format!("reading the {what}: the answer broke off: {e}"),
                    retryable: true,
                });
            }
            Watched::Item(Some(Ok(chunk))) => {
                if (out.len() + chunk.len()) as u64 > limit {
                    return Err(too_large("more sent".into()));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// The start of an error body, at most [`ERROR_BODY_CAP`] bytes; whatever follows, and a body
/// that stalls, are left unread.
pub(crate) async fn read_error_body(resp: reqwest::Response, idle: Duration) -> Bytes {
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    let mut watch = Watchdog::new(idle);
    while let Watched::Item(Some(Ok(chunk))) = watch.next(&mut stream).await {
        let room = ERROR_BODY_CAP - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= ERROR_BODY_CAP {
            break;
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_grow_with_the_request_body() {
        let idle = Duration::from_secs(60);
        assert_eq!(answer_deadline(idle, 0), idle);
        assert_eq!(
            answer_deadline(idle, 8 * 1024 * 1024),
            idle + Duration::from_secs(512)
        );
        assert_eq!(secs(Duration::from_millis(250)), "0.25 s");
        assert_eq!(secs(Duration::from_secs(60)), "60 s");
    }

    // Paused time: the sleeps and the timeouts advance a virtual clock, so this takes no time
    // and cannot flake.
    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_a_stall_and_a_steady_stream_is_not() {
        let idle = Duration::from_millis(100);
        // Ten bytes every 20 ms: 50 bytes a window, under the floor.
        let trickle = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")),
                n + 1,
            ))
        });
        let mut trickle = Box::pin(trickle);
        let mut w = Watchdog::new(idle);
        let mut got = 0;
        loop {
            match w.next(&mut trickle).await {
                Watched::Item(Some(Ok(c))) => got += c.len(),
                Watched::Item(_) => panic!("the trickle does not end"),
                Watched::Stalled => break,
            }
        }
        assert!(got < 1000, "{got}");
        // 4 KiB every 20 ms for 15 windows' worth: never a stall.
        let steady = futures_util::stream::iter(0..75).then(|_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 4096]))
        });
        let mut steady = Box::pin(steady);
        let mut w = Watchdog::new(idle);
        let mut chunks = 0;
        loop {
            match w.next(&mut steady).await {
                Watched::Item(Some(Ok(_))) => chunks += 1,
                Watched::Item(None) => break,
                Watched::Item(Some(Err(e))) => panic!("{e}"),
                Watched::Stalled => panic!("a steady stream stalled after {chunks} chunks"),
            }
        }
        assert_eq!(chunks, 75);
    }
}
