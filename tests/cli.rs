//! Runs the built `leasewire` binary against temporary data dirs: `init`, the no-daemon error
//! of client commands, and `audit verify` on an intact and a tampered log.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use leasewire::audit::{AuditKind, AuditLog, TREE_NAME};
use leasewire::config::{Config, Role};
use leasewire::identity::Identity;

/// Runs `leasewire --data-dir <dir> <args…>` with a clean environment for the variables the
/// CLI reads, so the caller's shell cannot change the outcome.
fn leasewire(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leasewire"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("LEASEWIRE_DATA_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("the leasewire binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_writes_private_key_and_parsable_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");

    let out = leasewire(&dir, &["init", "--role", "provider"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let identity = Identity::load(&dir).unwrap();
    assert!(
        stdout(&out).contains(&identity.peer_id.to_string()),
        "{}",
        stdout(&out)
    );

    let key_mode = std::fs::metadata(dir.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let config = Config::load(&dir.join("config.toml")).unwrap();
    assert!(config.has_role(Role::Provider));

    // A second init must not replace the identity.
    let again = leasewire(&dir, &["init", "--role", "renter"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with("error: "), "{}", stderr(&again));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(Identity::load(&dir).unwrap().peer_id, identity.peer_id);
    assert!(
        Config::load(&dir.join("config.toml"))
            .unwrap()
            .has_role(Role::Provider)
    );

    // --force does, and --json reports the new identity on one line.
    let forced = leasewire(&dir, &["init", "--role", "renter", "--force", "--json"]);
    assert_eq!(forced.status.code(), Some(0), "stderr: {}", stderr(&forced));
    let text = stdout(&forced);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let new_id = Identity::load(&dir).unwrap().peer_id;
    assert_ne!(new_id, identity.peer_id);
    assert_eq!(v["peer_id"], new_id.to_string());
    assert_eq!(v["data_dir"], dir.display().to_string());
    assert!(
        Config::load(&dir.join("config.toml"))
            .unwrap()
            .has_role(Role::Renter)
    );
}

#[test]
fn client_commands_without_daemon_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["offers", "--json"],
        &["leases"],
        &["release", "--yes"],
        &["terminate", "--lease", "ab", "--notice", "7d"],
    ] {
        let out = leasewire(tmp.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "error: no daemon is running for {}",
                tmp.path().display()
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("leasewire.sock"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(leasewire(tmp.path(), &["rent"]).status.code(), Some(2));
    assert_eq!(
        leasewire(tmp.path(), &["rent", "--auto", "--offer", "x"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        leasewire(tmp.path(), &["init", "--role", "admin"])
            .status
            .code(),
        Some(2)
    );
    // terminate needs a lease, and a notice as <N><s|m|h|d>.
    assert_eq!(leasewire(tmp.path(), &["terminate"]).status.code(), Some(2));
    assert_eq!(
        leasewire(
            tmp.path(),
            &["terminate", "--lease", "ab", "--notice", "7 days"]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(leasewire(tmp.path(), &["--help"]).status.code(), Some(0));
}

/// Initializes `dir` and writes `n` audit entries signed with its node key.
fn init_with_audit_log(dir: &Path, n: u64) {
    let out = leasewire(dir, &["init", "--role", "renter"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let key = Identity::load(dir).unwrap().signing_key;
    let db = sled::open(dir.join("db")).unwrap();
    let log = AuditLog::open(&db, key).unwrap();
    for i in 0..n {
        log.append(AuditKind::CreditAdded, &serde_json::json!({ "n": i }))
            .unwrap();
    }
    db.flush().unwrap();
}

/// Flips the last byte (inside the signature) of the stored entry `seq`.
fn tamper(dir: &Path, seq: u64) {
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree(TREE_NAME).unwrap();
    let mut value = tree.get(seq.to_be_bytes()).unwrap().unwrap().to_vec();
    *value.last_mut().unwrap() ^= 0x01;
    tree.insert(seq.to_be_bytes(), value).unwrap();
    db.flush().unwrap();
}

#[test]
fn audit_verify_passes_then_names_the_tampered_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_with_audit_log(dir, 5);

    let ok = leasewire(dir, &["audit", "verify"]);
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", stderr(&ok));
    assert!(stdout(&ok).contains("5 entries"), "{}", stdout(&ok));

    let ok = leasewire(dir, &["audit", "verify", "--json"]);
    assert_eq!(ok.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["entries"], 5);
    assert!(v["first_bad"].is_null());

    // `show --from` lists only the tail; `export` every entry.
    let show = leasewire(dir, &["audit", "show", "--from", "3"]);
    assert_eq!(show.status.code(), Some(0), "stderr: {}", stderr(&show));
    let lines: Vec<String> = stdout(&show).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].trim_start().starts_with("3 "), "{lines:?}");
    assert!(lines[1].contains("credit_added"));
    let export = leasewire(dir, &["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.status.code(), Some(0));
    let seqs: Vec<u64> = stdout(&export)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);

    tamper(dir, 2);
    let bad = leasewire(dir, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).starts_with("error: audit log broken at seq 2: "),
        "{}",
        stderr(&bad)
    );

    let bad = leasewire(dir, &["audit", "verify", "--json"]);
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&bad)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["entries"], 2);
    assert_eq!(v["first_bad"]["seq"], 2);
    assert!(v["first_bad"]["reason"].as_str().unwrap().len() > 3);
}

#[test]
fn audit_without_database_fails_without_creating_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = leasewire(tmp.path(), &["init", "--role", "renter"]);
    assert_eq!(out.status.code(), Some(0));
    let out = leasewire(tmp.path(), &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no audit log at"), "{}", stderr(&out));
    assert!(!tmp.path().join("db").exists());
}

#[test]
fn audit_verify_says_when_the_store_itself_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_with_audit_log(dir, 2_000);
    // Damage the sled files themselves (not an entry): the store cannot be opened at all.
    for entry in std::fs::read_dir(dir.join("db")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let mut bytes = std::fs::read(&p).unwrap();
            for b in bytes.iter_mut().step_by(7) {
                *b ^= 0x5a;
            }
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let out = leasewire(dir, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: store corrupt at {}",
            dir.join("db").display()
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
