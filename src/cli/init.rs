//! `leasewire init --role provider|renter [--force]`: creates the data dir, the node key and a
//! commented config.toml from the role's template.

use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::{RoleArg, print_json};
use leasewire::datadir::DataDir;
use leasewire::fsutil;
use leasewire::identity::Identity;

const PROVIDER_TEMPLATE: &str = include_str!("../../config/provider.toml");
const RENTER_TEMPLATE: &str = include_str!("../../config/renter.toml");

pub(super) fn run(data_dir: &Path, role: RoleArg, force: bool, json: bool) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    let config_path = dir.config_file();
    // Check both files before touching either, so a refused init changes nothing.
    if !force {
        for existing in [dir.node_key(), config_path.clone()] {
            if existing.exists() {
                bail!(
                    "{} already exists; pass --force to overwrite it (the node gets a new identity)",
                    existing.display()
                );
            }
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;

    let identity = Identity::create(data_dir, force)
        .with_context(|| format!("cannot create the node key in {}", data_dir.display()))?;
    let template = match role {
        RoleArg::Provider => PROVIDER_TEMPLATE,
        RoleArg::Renter => RENTER_TEMPLATE,
    };
    write_private(&config_path, template)?;
    tracing::info!(peer_id = %identity.peer_id, data_dir = %data_dir.display(), "initialized");

    let mut out = io::stdout().lock();
    if json {
        return print_json(
            &mut out,
            &serde_json::json!({
                "peer_id": identity.peer_id.to_string(),
                "data_dir": data_dir.display().to_string(),
            }),
        );
    }
    let d = data_dir.display();
    writeln!(out, "initialized {d}")?;
    writeln!(out, "peer id: {}", identity.peer_id)?;
    writeln!(out, "\nnext steps:")?;
    match role {
        RoleArg::Provider => writeln!(
            out,
            "  1. edit {d}/config.toml: your LND (address, tls cert, invoice macaroon),\n     \
             [provider] endpoint and the address pools routed to this host\n  \
             2. start the node:    leasewire --data-dir {d} daemon\n  \
             3. watch your leases: leasewire --data-dir {d} leases"
        )?,
        RoleArg::Renter => writeln!(
            out,
            "  1. edit {d}/config.toml: your LND (address, tls cert, macaroon) and bootstrap peers\n  \
             2. start the node:    leasewire --data-dir {d} daemon\n  \
             3. rent an address:   leasewire --data-dir {d} rent --auto"
        )?,
    }
    Ok(())
}

/// Writes `text` to `path` with mode 0600 (the config may hold the market secret), replacing
/// any existing file atomically so a crash never leaves half a config behind.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    fsutil::write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasewire::config::{Config, Role};

    #[test]
    fn templates_parse_and_name_their_role() {
        let p = Config::from_toml(PROVIDER_TEMPLATE).unwrap();
        assert!(p.has_role(Role::Provider));
        let r = Config::from_toml(RENTER_TEMPLATE).unwrap();
        assert!(r.has_role(Role::Renter));
        assert!(!r.has_role(Role::Provider));
    }

    #[test]
    fn config_is_written_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_private(&path, "a = 1\nb = 2\n").unwrap();
        write_private(&path, "c = 3\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c = 3\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(".config.toml.tmp").exists());
    }
}
