//! A tar encoder that writes exactly the bytes it is told to: ustar headers (encoded by the `tar`
//! crate's `Header`), PAX extended headers for whatever ustar cannot hold (long paths and link
//! targets, large sizes and ids, xattrs), and nothing that depends on the machine or the clock.

use std::io::{self, Read, Write};

use tar::{EntryType, Header};

const BLOCK: usize = 512;
/// Largest value an 11-digit octal size field holds.
const MAX_OCTAL_SIZE: u64 = 0o777_7777_7777;
/// Largest value a 7-digit octal id field holds.
const MAX_OCTAL_ID: u64 = 0o777_7777;

/// The kind of one tar entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File { size: u64 },
    Dir,
    Symlink { target: String },
    Hardlink { target: String },
    Fifo,
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

/// One entry's metadata. `path` is relative (no leading `/`), with no trailing `/`.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug)]
pub(crate) struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Writes one entry; `data` must yield exactly `size` bytes for a file.
    pub fn append(&mut self, e: &Entry, data: Option<&mut dyn Read>) -> io::Result<()> {
        // Directories carry a trailing slash, as tar and Docker write them.
        let name = match e.kind {
            Kind::Dir => format!("{}/", e.path),
            _ => e.path.clone(),
        };
        let mut header = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (entry_type, size) = match &e.kind {
            Kind::File { size } => (EntryType::Regular, *size),
            Kind::Dir => (EntryType::Directory, 0),
            Kind::Symlink { .. } => (EntryType::Symlink, 0),
            Kind::Hardlink { .. } => (EntryType::Link, 0),
            Kind::Fifo => (EntryType::Fifo, 0),
            Kind::CharDevice { .. } => (EntryType::Char, 0),
            Kind::BlockDevice { .. } => (EntryType::Block, 0),
        };
        header.set_entry_type(entry_type);
        header.set_mode(e.mode & 0o7777);
        header.set_mtime(e.mtime);
        if size > MAX_OCTAL_SIZE {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        header.set_size(size);
        for (key, id, set) in [
            ("uid", e.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", e.gid, Header::set_gid),
        ] {
            if id > MAX_OCTAL_ID {
                pax.push((key.into(), id.to_string().into_bytes()));
                set(&mut header, 0);
            } else {
                set(&mut header, id);
            }
        }
        if let Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } = e.kind {
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
        }
        {
            let ustar = header
                .as_ustar_mut()
                .ok_or_else(|| io::Error::other("ustar header expected"))?;
            if !split_ustar_name(&name, &mut ustar.name, &mut ustar.prefix) {
                pax.push(("path".into(), name.clone().into_bytes()));
                let cut = truncate_at_char(&name, ustar.name.len());
                ustar.name[..cut.len()].copy_from_slice(cut.as_bytes());
            }
            if let Kind::Symlink { target } | Kind::Hardlink { target } = &e.kind {
                if target.len() <= ustar.linkname.len() {
                    ustar.linkname[..target.len()].copy_from_slice(target.as_bytes());
                } else {
                    pax.push(("linkpath".into(), target.clone().into_bytes()));
                    let cut = truncate_at_char(target, ustar.linkname.len());
                    ustar.linkname[..cut.len()].copy_from_slice(cut.as_bytes());
                }
            }
        }
        for (k, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            pax.sort();
            self.write_pax(&pax, e.mtime)?;
        }
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        if let (Kind::File { size }, Some(data)) = (&e.kind, data) {
            let copied = io::copy(&mut data.take(*size), &mut self.out)?;
            if copied != *size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} shrank while it was read ({copied} of {size} bytes)",
                        e.path
                    ),
                ));
            }
            self.pad(*size)?;
        }
        Ok(())
    }

    fn write_pax(&mut self, records: &[(String, Vec<u8>)], mtime: u64) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend_from_slice(&pax_record(k, v));
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_size(body.len() as u64);
        {
            let ustar = h
                .as_ustar_mut()
                .ok_or_else(|| io::Error::other("ustar header expected"))?;
            let name = b"PaxHeader";
            ustar.name[..name.len()].copy_from_slice(name);
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// Puts `name` into ustar's name (100 bytes) and prefix (155 bytes) fields, split at a `/`.
/// Returns false when it does not fit and a PAX `path` record is needed.
fn split_ustar_name(name: &str, field: &mut [u8; 100], prefix: &mut [u8; 155]) -> bool {
    let bytes = name.as_bytes();
    if bytes.len() <= field.len() {
        field[..bytes.len()].copy_from_slice(bytes);
        return true;
    }
    // Split at the last '/' such that the rest fits the name field; a trailing '/' of a directory
    // stays with the name.
    let search_end = bytes.len().saturating_sub(1);
    for (i, &b) in bytes[..search_end].iter().enumerate().rev() {
        if b != b'/' {
            continue;
        }
        let (pre, rest) = (&bytes[..i], &bytes[i + 1..]);
        if rest.len() > field.len() {
            return false;
        }
        if pre.len() <= prefix.len() && !rest.is_empty() {
            prefix[..pre.len()].copy_from_slice(pre);
            field[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    false
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself
/// included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: vec![("user.k".into(), b"v".to_vec())],
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("path", b"abc"), b"12 path=abc\n");
        let r = pax_record("k", &[b'x'; 95]);
        assert_eq!(r.len(), 102);
        assert!(r.starts_with(b"102 k="));
    }

    #[test]
    fn long_names_links_and_xattrs_read_back_with_the_tar_crate() {
        let long = format!("{}/{}", "d".repeat(160), "f".repeat(120));
        let target = format!("/{}", "t".repeat(150));
        let mut w = TarWriter::new(Vec::new());
        let data = b"hello";
        w.append(&entry(&long, Kind::File { size: 5 }), Some(&mut &data[..]))
            .unwrap();
        w.append(
            &entry(
                "link",
                Kind::Symlink {
                    target: target.clone(),
                },
            ),
            None,
        )
        .unwrap();
        let split = format!("{}/{}", "p".repeat(120), "n".repeat(50));
        w.append(&entry(&split, Kind::Dir), None).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mode = e.header().mode().unwrap();
            let xattr = e
                .pax_extensions()
                .unwrap()
                .map(|exts| {
                    exts.map(|x| x.unwrap())
                        .any(|x| x.key() == Ok("SCHILY.xattr.user.k") && x.value_bytes() == b"v")
                })
                .unwrap_or(false);
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((path, link, mode, xattr, body));
        }
        assert_eq!(seen[0].0, long);
        assert_eq!(seen[0].2, 0o4755);
        assert!(seen[0].3, "xattr travels in PAX");
        assert_eq!(seen[0].4, b"hello");
        assert_eq!(seen[1].1.as_deref(), Some(target.as_str()));
        assert_eq!(seen[2].0, format!("{split}/"));
    }

    #[test]
    fn a_file_that_shrinks_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let err = w
            .append(&entry("f", Kind::File { size: 10 }), Some(&mut &b"abc"[..]))
            .unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}
