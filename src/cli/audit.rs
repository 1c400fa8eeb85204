//! `leasewire audit verify|show|export`: reads the audit tree of `D/db` directly.
//!
//! sled allows one process per database. While the daemon runs it holds the lock, so `verify`
//! asks the daemon over the control API instead; `show` and `export` need a stopped daemon.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context as _, bail};

use super::{print_json, rpc};
use leasewire::audit;
use leasewire::datadir::DataDir;
use leasewire::identity::Identity;

/// Opens `D/db`; `Ok(None)` when another process (the daemon) holds its lock.
fn open_db(data_dir: &Path) -> anyhow::Result<Option<sled::Db>> {
    let path = DataDir::new(data_dir).db();
    // sled::open would create an empty database; a missing one is worth saying so.
    if !path.exists() {
        bail!(
            "no audit log at {} (the daemon creates it when it first starts)",
            path.display()
        );
    }
    match leasewire::datadir::open_db(&path) {
        Ok(db) => Ok(Some(db)),
        Err(leasewire::datadir::DbOpenError::Locked(_)) => Ok(None),
        // "store corrupt at <path>: ..." when the sled files themselves are damaged.
        Err(e) => Err(e.into()),
    }
}

fn open_tree(db: &sled::Db) -> anyhow::Result<sled::Tree> {
    db.open_tree(audit::TREE_NAME)
        .context("cannot open the audit tree")
}

/// `audit verify`: exit 0 when intact; an error naming the first bad seq otherwise (after the
/// JSON report with `--json`).
pub(super) fn verify(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let Some(db) = open_db(data_dir)? else {
        tracing::debug!("database locked by the daemon; verifying over the control API");
        return rpc::block_on(verify_remote(data_dir, json));
    };
    let identity = Identity::load(data_dir)
        .with_context(|| format!("cannot load the node key from {}", data_dir.display()))?;
    let key = identity.signing_key.verifying_key();
    // Not part of the verdict (entries are checked against the node key regardless), but it
    // explains a failure at seq 0 when the key was replaced with `init --force`.
    if let Ok(Some(stored)) = audit::stored_signer(&db)
        && stored != key
    {
        writeln!(
            io::stderr(),
            "warning: the log records signer {} but the node key is {}",
            hex::encode(stored.as_bytes()),
            hex::encode(key.as_bytes())
        )?;
    }
    // The signed heads kept outside the database reveal a truncated or rewritten log.
    let kept = audit::head_file::load_all(&data_dir.join(audit::head_file::HEAD_FILE_NAME))
        .context("cannot read the kept audit head")?;
    let report = audit::verify_with_heads(&open_tree(&db)?, &key, &kept);
    let mut out = io::stdout().lock();
    if json {
        print_json(&mut out, &report)?;
    }
    match report.first_bad {
        None => {
            if !json {
                writeln!(
                    out,
                    "audit log intact: {} entries, head {}",
                    report.entries, report.head_hash
                )?;
            }
            Ok(())
        }
        Some(bad) => bail!("audit log broken at seq {}: {}", bad.seq, bad.reason),
    }
}

async fn verify_remote(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let reply = rpc::connect(data_dir).await?.audit_verify().await?;
    let mut out = io::stdout().lock();
    if json {
        // Same shape as the local report (without head_hash, which the RPC does not carry).
        let first_bad = reply
            .first_bad_seq
            .map(|seq| serde_json::json!({ "seq": seq, "reason": reply.reason }));
        print_json(
            &mut out,
            &serde_json::json!({ "ok": reply.ok, "entries": reply.entries, "first_bad": first_bad }),
        )?;
    }
    if reply.ok {
        if !json {
            writeln!(out, "audit log intact: {} entries", reply.entries)?;
        }
        return Ok(());
    }
    match reply.first_bad_seq {
        Some(seq) => bail!("audit log broken at seq {seq}: {}", reply.reason),
        None => bail!("audit log broken: {}", reply.reason),
    }
}

fn locked_error(data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the daemon holds the database {} open; stop the daemon first (`audit verify` works while it runs)",
        DataDir::new(data_dir).db().display()
    )
}

/// `audit show [--from SEQ] [--json]`.
pub(super) fn show(data_dir: &Path, from: u64, json: bool) -> anyhow::Result<()> {
    let db = open_db(data_dir)?.ok_or_else(|| locked_error(data_dir))?;
    let tree = open_tree(&db)?;
    // `audit::show` lists from seq 0, one line per entry in key order. Entries are stored
    // under `seq.to_be_bytes()` (the documented v1 format), so the lines to drop are exactly
    // the keys below `from`.
    let skip = tree.range(..from.to_be_bytes()).count() as u64;
    let out = SkipLines {
        inner: io::stdout().lock(),
        skip,
    };
    audit::show(&tree, out, json)?;
    Ok(())
}

/// `audit export --format jsonl`.
pub(super) fn export(data_dir: &Path) -> anyhow::Result<()> {
    let db = open_db(data_dir)?.ok_or_else(|| locked_error(data_dir))?;
    audit::export_jsonl(&open_tree(&db)?, io::stdout().lock())?;
    Ok(())
}

/// A writer that drops the first `skip` lines written to it and passes the rest through.
struct SkipLines<W> {
    inner: W,
    skip: u64,
}

impl<W: Write> Write for SkipLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while self.skip > 0 {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.skip -= 1;
                    rest = &rest[i + 1..];
                }
                // The whole buffer belongs to a skipped line.
                None => return Ok(buf.len()),
            }
        }
        self.inner.write_all(rest)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `audit peers` / `audit evidence`: the peers' heads this node witnessed, or the evidence of
/// forks and rollbacks it found; from the database, or from the daemon while it runs.
pub(super) fn witness(data_dir: &Path, evidence: bool, json: bool) -> anyhow::Result<()> {
    let value: serde_json::Value = match open_db(data_dir)? {
        Some(db) => {
            let (peers, found) = leasewire::market::witness::Witness::read(&db)?;
            serde_json::json!({ "peers": peers, "evidence": found })
        }
        None => {
            let mut text = String::new();
            rpc::block_on(async {
                text = rpc::connect(data_dir).await?.audit_witness().await?.json;
                Ok(())
            })?;
            serde_json::from_str(&text).context("daemon sent bad JSON")?
        }
    };
    let key = if evidence { "evidence" } else { "peers" };
    let list = value[key].as_array().cloned().unwrap_or_default();
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &list);
    }
    if list.is_empty() {
        writeln!(
            out,
            "{}",
            if evidence {
                "no evidence: every witnessed head extended the one before"
            } else {
                "no peer heads witnessed yet"
            }
        )?;
        return Ok(());
    }
    for item in &list {
        if evidence {
            writeln!(
                out,
                "{}  {}  {} (head of {} then {})",
                item["peer"].as_str().unwrap_or("?"),
                item["kind"].as_str().unwrap_or("?"),
                item["reason"].as_str().unwrap_or(""),
                item["old"]["size"],
                item["new"]["size"],
            )?;
        } else {
            writeln!(
                out,
                "{}  size {}  root {}  signed {}",
                item["peer"].as_str().unwrap_or("?"),
                item["head"]["size"],
                item["head"]["root"].as_str().unwrap_or("?"),
                item["head"]["time_ms"],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_drops_exactly_the_first_lines_across_writes() {
        let mut w = SkipLines {
            inner: Vec::new(),
            skip: 2,
        };
        w.write_all(b"zero\non").unwrap();
        w.write_all(b"e\ntwo\n").unwrap();
        w.write_all(b"three\n").unwrap();
        assert_eq!(w.inner, b"two\nthree\n");

        let mut none = SkipLines {
            inner: Vec::new(),
            skip: 0,
        };
        none.write_all(b"a\nb\n").unwrap();
        assert_eq!(none.inner, b"a\nb\n");
    }

    #[test]
    fn missing_database_is_reported_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_db(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no audit log at"), "{err}");
        assert!(!dir.path().join("db").exists());
    }

    #[test]
    fn locked_database_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let _held = sled::open(dir.path().join("db")).unwrap();
        assert!(open_db(dir.path()).unwrap().is_none());
    }
}
