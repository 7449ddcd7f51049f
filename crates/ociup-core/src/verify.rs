//! Readers that check a blob's size and digest while it streams. A mismatch surfaces as an
//! `io::Error` of kind `InvalidData` carrying [`Error`], recoverable with [`Error::from_io`]; a
//! blob longer than announced fails as soon as the extra byte arrives.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::digest::{Digest, Hasher};
use crate::error::Error;

#[derive(Debug)]
struct Check {
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    seen: u64,
}

impl Check {
    fn new(digest: Digest, size: u64) -> Self {
        Check {
            hasher: Some(digest.algorithm().hasher()),
            digest,
            size,
            seen: 0,
        }
    }

    /// Feeds `bytes`; `eof` when the inner reader reported the end.
    fn feed(&mut self, bytes: &[u8], eof: bool) -> io::Result<()> {
        self.seen += bytes.len() as u64;
        if self.seen > self.size {
            return Err(Error::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.seen,
            }
            .into_io());
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(bytes);
        }
        if eof {
            if self.seen != self.size {
                return Err(Error::SizeMismatch {
                    digest: self.digest.clone(),
                    expected: self.size,
                    actual: self.seen,
                }
                .into_io());
            }
            if let Some(h) = self.hasher.take() {
                let actual = h.finish();
                if actual != self.digest {
                    return Err(Error::DigestMismatch {
                        what: format!("blob {}", self.digest),
                        expected: self.digest.clone(),
                        actual,
                    }
                    .into_io());
                }
            }
        }
        Ok(())
    }
}

/// Wraps a blocking reader.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    check: Check,
}

impl<R> VerifyingReader<R> {
    /// Checks that `inner` yields exactly `size` bytes hashing to `digest`.
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        VerifyingReader {
            inner,
            check: Check::new(digest, size),
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.feed(&buf[..n], n == 0 && !buf.is_empty())?;
        Ok(n)
    }
}

/// Wraps an async reader.
#[derive(Debug)]
pub struct AsyncVerifyingReader<R> {
    inner: R,
    check: Check,
}

impl<R> AsyncVerifyingReader<R> {
    /// Checks that `inner` yields exactly `size` bytes hashing to `digest`.
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        AsyncVerifyingReader {
            inner,
            check: Check::new(digest, size),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncVerifyingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let eof = new.is_empty() && had_room;
                let checked = this.check.feed(new, eof);
                if checked.is_err() {
                    // A reader that fails hands out nothing from that call.
                    buf.set_filled(before);
                }
                Poll::Ready(checked)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &[u8], digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        VerifyingReader::new(data, digest.clone(), size)
            .read_to_end(&mut out)
            .map_err(|e| Error::from_io("reading", e))?;
        Ok(out)
    }

    #[test]
    fn passes_good_blobs_and_names_bad_ones() {
        let d = Digest::sha256(b"hello");
        assert_eq!(read_all(b"hello", &d, 5).unwrap(), b"hello");
        assert!(matches!(
            read_all(b"hell", &d, 5),
            Err(Error::SizeMismatch { actual: 4, .. })
        ));
        assert!(matches!(
            read_all(b"hello!", &d, 5),
            Err(Error::SizeMismatch { actual: 6, .. })
        ));
        assert!(matches!(
            read_all(b"jello", &d, 5),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn async_reader_checks_too() {
        use tokio::io::AsyncReadExt;
        let d = Digest::sha256(b"hello");
        let mut out = Vec::new();
        let err = AsyncVerifyingReader::new(&b"jello"[..], d, 5)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(matches!(
            Error::from_io("x", err),
            Error::DigestMismatch { .. }
        ));
    }
}
