//! Manifests, indexes and configs as stores hand them out: parsed as ociup parses what it
//! pulls, then walked as ociup walks them (config and layer digests, platforms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_core::Digest;
use ociup_core::config::Config;
use ociup_core::document::{Document, RawDocument};
use ociup_core::media_type::{DOCKER_INDEX, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use ociup_core::ops;

fuzz_target!(|data: &[u8]| {
    // As the descriptor or the Content-Type header may name it, or not at all.
    for media_type in ["", OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_INDEX] {
        match Document::parse(RawDocument::new(data.to_vec(), media_type)) {
            Ok(Document::Manifest(m)) => {
                let _ = m.config_digest();
                for layer in m.parsed().layers() {
                    let _ = Digest::try_from(layer.digest());
                }
                let _ = m.raw().descriptor();
            }
            Ok(Document::Index(i)) => {
                for p in ops::platforms(&i) {
                    let _ = ops::select_platform(&i, &p);
                }
                for d in i.parsed().manifests() {
                    let _ = Digest::try_from(d.digest());
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(c) = Config::parse(RawDocument::new(data.to_vec(), OCI_CONFIG)) {
        let _ = c.diff_ids();
        let _ = (c.str_field("os"), c.str_field("architecture"));
    }
});
