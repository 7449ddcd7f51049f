//! Layer blobs as `verify` reads them back: gzip, zstd or plain tar (chosen by the magic
//! number, as a descriptor's media type would), every entry listed and every file hashed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_core::managed::build_manifest::layer_files;
use ociup_core::media_type::Compression;

fuzz_target!(|data: &[u8]| {
    let compression = if data.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let _ = layer_files(data, compression);
});
