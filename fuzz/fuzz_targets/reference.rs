//! Image references as users, recipes, catalogs and images' own annotations give them: the
//! registry client's `host/name[:tag][@digest]`, the core's `oci:<dir>[:<tag>|@<digest>]`, the
//! base name written into annotations, and platforms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_core::reference::{LayoutRef, PlatformSpec, base_name};
use ociup_registry::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        // What is printed (and stored in catalogs) parses back to the same reference.
        let shown = r.to_string();
        let again = Reference::parse(&shown)
            .unwrap_or_else(|e| panic!("{s:?} parsed, but its display {shown:?} does not: {e}"));
        assert_eq!(r, again, "{s:?} -> {shown:?}");
        let _ = (r.api_host(), r.is_loopback(), r.manifest_ref());
        let _ = r.with_tag("latest");
    }
    let _ = s.parse::<Reference>();
    let _ = LayoutRef::parse(s);
    let _ = base_name(s);
    let _ = s.parse::<PlatformSpec>();
});
