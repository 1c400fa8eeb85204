//! The config file (`config::Config::from_toml`, with every section's own validation): written
//! by the operator, read by the daemon and by `leasewire init`.
//!
//! Input: the TOML text. Properties: no panic; a config that loads is written back by
//! `to_toml` (which must not panic) as TOML that loads to the same config.

#![no_main]

use leasewire::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    let written = cfg.to_toml();
    let again = Config::from_toml(&written)
        .unwrap_or_else(|e| panic!("a written config does not load: {e}\n{written}"));
    assert_eq!(again, cfg, "config round trip changed it");
});
