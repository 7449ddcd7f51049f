//! Recipe files (`register --recipe`), and the same recipes as the catalog stores them:
//! parsed, validated, and applied to a config as a regeneration applies them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_core::config::{Config, apply_changes};
use ociup_core::managed::recipe::Recipe;

fuzz_target!(|data: &[u8]| {
    let Ok(recipe) = Recipe::parse(data, "fuzz.json") else {
        return;
    };
    let valid = recipe.validate().is_ok();
    let _ = recipe.commands();
    let _ = recipe.annotations();
    let changes = recipe.config_changes();
    let mut config = Config::scratch("linux", "amd64", None);
    let applied = apply_changes(&mut config, &changes);
    if valid {
        // What validation lets through applies (register promises to check it all first).
        if let Err(e) = applied {
            panic!("a valid recipe's config steps do not apply: {e}");
        }
    }
});
