//! A reader of tar streams from elsewhere that refuses oversized extension headers before a tar
//! reader holds them in memory.
//!
//! A GNU long name (`L`), long link (`K`) or PAX header (`x`, `g`) is read whole by tar readers,
//! the `tar` crate's among them, whatever size its header announces: a layer of a few megabytes
//! of compressed zeros could make one allocate gigabytes. [`BoundedTarHeaders`] follows the
//! stream's 512-byte blocks as they pass through and fails past [`MAX_EXTENSION_HEADER`] (Go's
//! archive/tar, which umoci and containerd use, stops at 1 MiB too).

use std::io::{self, Read};

/// The largest extension header (long name, long link, PAX records) a layer may hold.
pub const MAX_EXTENSION_HEADER: u64 = 1024 * 1024;

const BLOCK: usize = 512;

#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// GNU sparse extension blocks follow the header, then `data` bytes of data.
    SparseExtension { data: u64 },
    /// Passing over an entry's data (rounded up to whole blocks).
    Data { left: u64 },
    /// Collecting a PAX header's records (at most [`MAX_EXTENSION_HEADER`]) to learn a `size`
    /// record for the next entry, then passing its padding.
    Pax { left: u64, padding: u64 },
}

/// Wraps the uncompressed bytes of a tar stream; see the [module docs](self).
#[derive(Debug)]
pub struct BoundedTarHeaders<R> {
    inner: R,
    state: State,
    block: Vec<u8>,
    pax: Vec<u8>,
    /// A PAX `size` record for the next entry, which overrides its header's size field.
    next_size: Option<u64>,
}

impl<R: Read> BoundedTarHeaders<R> {
    /// Wraps `inner`, positioned at the start of a tar stream.
    pub fn new(inner: R) -> Self {
        BoundedTarHeaders {
            inner,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            pax: Vec::new(),
            next_size: None,
        }
    }

    /// Follows the stream over `bytes`, which have just been read.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header | State::SparseExtension { .. } => {
                    let take = (BLOCK - self.block.len()).min(bytes.len());
                    self.block.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.block.len() == BLOCK {
                        self.end_of_block()?;
                        self.block.clear();
                    }
                }
                State::Data { left } => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Pax { left, padding } => {
                    let take = (*left).min(bytes.len() as u64);
                    let n = usize::try_from(take).unwrap_or(bytes.len());
                    self.pax.extend_from_slice(&bytes[..n]);
                    *left -= take;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        let padding = *padding;
                        self.next_size = pax_size(&self.pax)?.or(self.next_size);
                        self.pax.clear();
                        self.state = if padding == 0 {
                            State::Header
                        } else {
                            State::Data { left: padding }
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole block was collected in the header or sparse-extension state.
    fn end_of_block(&mut self) -> io::Result<()> {
        let block = &self.block;
        if let State::SparseExtension { data } = self.state {
            // Byte 504 of an extension block says whether another follows.
            self.state = if block[504] != 0 {
                State::SparseExtension { data }
            } else {
                data_state(data)
            };
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(()); // end-of-archive blocks
        }
        let size = octal_or_base256(&block[124..136])?;
        let kind = block[156];
        match kind {
            b'L' | b'K' | b'x' | b'g' if size > MAX_EXTENSION_HEADER => Err(invalid(format!(
                "a tar extension header ({}) of {size} bytes, past the {MAX_EXTENSION_HEADER} \
                     a layer may hold",
                char::from(kind)
            ))),
            b'x' => {
                self.state = State::Pax {
                    left: size,
                    padding: padded(size) - size,
                };
                if size == 0 {
                    self.state = State::Header;
                }
                Ok(())
            }
            b'L' | b'K' | b'g' => {
                self.state = data_state(size);
                Ok(())
            }
            _ => {
                let size = self.next_size.take().unwrap_or(size);
                // GNU sparse: extension blocks follow when byte 482 says so.
                self.state = if kind == b'S' && block[482] != 0 {
                    State::SparseExtension { data: size }
                } else {
                    data_state(size)
                };
                Ok(())
            }
        }
    }
}

impl<R: Read> Read for BoundedTarHeaders<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn data_state(size: u64) -> State {
    match padded(size) {
        0 => State::Header,
        left => State::Data { left },
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// A header's numeric field: octal digits (NUL- or space-terminated), or GNU's base-256 form
/// (high bit of the first byte set).
fn octal_or_base256(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| invalid("a tar size field past 2^64".into()))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text =
        std::str::from_utf8(&text).map_err(|_| invalid("a tar size field not in octal".into()))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("a tar size field {text:?}")))
}

/// The `size` record of PAX records (`LEN key=value\n` each), if any.
fn pax_size(records: &[u8]) -> io::Result<Option<u64>> {
    let mut size = None;
    let mut rest = records;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > space && l <= rest.len())
            .ok_or_else(|| invalid("a malformed PAX record".into()))?;
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            if size.is_none() {
                return Err(invalid("a malformed PAX size record".into()));
            }
        }
        rest = &rest[len..];
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        // Small reads, so that blocks straddle calls.
        struct Chunks<'a>(&'a [u8], usize);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        BoundedTarHeaders::new(Chunks(bytes, chunk)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn header(name: &str, kind: u8, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        *h.as_bytes()
    }

    #[test]
    fn ordinary_archives_pass_through_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(120) + "file";
        for (i, name) in ["a", long.as_str(), "b/c"].iter().enumerate() {
            let data = vec![b'x'; 700 * i + 3];
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", "t/".repeat(80) + "target")
            .unwrap();
        let pax = [("path", "p".repeat(300).into_bytes())];
        b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, &v[..])))
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        b.append_data(&mut h, "short", &b"hello"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        for chunk in [1, 7, 512, 4096] {
            assert_eq!(read_all(&bytes, chunk).unwrap(), bytes);
        }
        // And the tar crate reads it through the wrapper as without it.
        let mut ar = tar::Archive::new(BoundedTarHeaders::new(&bytes[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(names[1], long);
        assert_eq!(names[3], "l");
        assert_eq!(
            names[4],
            "p".repeat(300),
            "the PAX path applies to the next entry"
        );
    }

    #[test]
    fn an_oversized_extension_header_fails_before_it_is_read() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let mut stream = header("././@LongLink", kind, 8 << 30).to_vec();
            stream.extend(std::iter::repeat_n(0u8, 4096));
            let err = read_all(&stream, 4096).unwrap_err();
            assert!(err.to_string().contains("past the"), "{err}");
        }
        // At the limit is fine.
        let mut stream = header("././@LongLink", b'L', MAX_EXTENSION_HEADER).to_vec();
        stream.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_HEADER as usize));
        assert!(read_all(&stream, 65536).is_ok());
    }

    #[test]
    fn a_pax_size_record_sets_the_next_entry_s_data_length() {
        // The next header says 0 bytes, PAX says 600: a later oversized long name must still
        // be found at the right block.
        let record = b"12 size=600\n";
        let mut stream = header("pax", b'x', record.len() as u64).to_vec();
        stream.extend_from_slice(record);
        stream.resize(1024, 0);
        stream.extend_from_slice(&header("big", b'0', 0));
        stream.extend(std::iter::repeat_n(b'z', 1024)); // 600 bytes padded to 1024
        stream.extend_from_slice(&header("././@LongLink", b'L', 1 << 40));
        let err = read_all(&stream, 100).unwrap_err();
        assert!(err.to_string().contains("past the"), "{err}");
    }
}
