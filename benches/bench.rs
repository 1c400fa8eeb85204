//! leasewire figures: `cargo bench -p leasewire --bench bench`.
//!
//! A plain `main` (the target has `harness = false`) that prints one `name: value` line per
//! figure, so results can be grepped or diffed between runs. Each area has its own section
//! function; add new areas as further `bench_*` functions called from `main`.
//!
//! Everything runs in temporary directories; the simnet section runs the real `simnet` binary,
//! whose processes talk only over 127.0.0.1. Build it first (`cargo build --release
//! --workspace`); `LEASEWIRE_BENCH_SIMNET_RUNS` sets the number of runs (default 3, 0 skips).
//! The netns section (root and wireguard-go only) runs `simnet --netns`, whose traffic stays
//! inside its own network namespaces; `LEASEWIRE_BENCH_NETNS_RUNS` sets its runs (default 2).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ed25519_dalek::{Signer, SigningKey};
use leasewire::audit::{self, AuditKind, AuditLog};
use serde::Serialize;
use sha2::Digest;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); every section runs regardless.
    println!("# leasewire bench");
    bench_audit().context("audit section")?;
    bench_limits().context("limits section")?;
    bench_simnet().context("simnet section")?;
    bench_netns().context("netns section")?;
    Ok(())
}

/// The `simnet` binary beside this bench's own (target/<profile>/deps/bench-* ->
/// target/<profile>/simnet), or `LEASEWIRE_SIMNET_BIN`.
fn simnet_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("LEASEWIRE_SIMNET_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("simnet");
    candidate.is_file().then_some(candidate)
}

/// Discovery time and rent-to-lease time over whole simnet runs (3 providers, 5 renters):
/// real daemons, real lnd-sim, libp2p over loopback.
fn bench_simnet() -> anyhow::Result<()> {
    let runs: usize = std::env::var("LEASEWIRE_BENCH_SIMNET_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if runs == 0 {
        println!("simnet: skipped (LEASEWIRE_BENCH_SIMNET_RUNS=0)");
        return Ok(());
    }
    let Some(simnet) = simnet_binary() else {
        println!(
            "simnet: SKIPPED: no simnet binary next to the bench; run `cargo build --release --workspace` first"
        );
        return Ok(());
    };
    let (mut discovery, mut lease, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let started = Instant::now();
        let out = std::process::Command::new(&simnet)
            .args(["--providers", "3", "--renters", "5", "--json"])
            .stderr(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", simnet.display()))?;
        walls.push(started.elapsed());
        ensure!(
            out.status.success(),
            "simnet run {run} failed: {}",
            out.status
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("simnet JSON")?;
        for r in v["rentals"].as_array().context("rentals array")? {
            if let Some(ms) = r["lease_ms"].as_u64() {
                lease.push(Duration::from_millis(ms));
            }
            if let Some(ms) = r["discovery_ms"].as_u64() {
                discovery.push(Duration::from_millis(ms));
            }
        }
    }
    discovery.sort();
    lease.sort();
    walls.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("simnet_runs: {runs} (3 providers, 5 renters each)");
    println!("simnet_rentals: {}", lease.len());
    println!(
        "simnet_discovery_ms_p50: {:.0}",
        ms(percentile(&discovery, 50))
    );
    println!(
        "simnet_discovery_ms_p99: {:.0}",
        ms(percentile(&discovery, 99))
    );
    println!(
        "simnet_rent_to_lease_ms_p50: {:.0}",
        ms(percentile(&lease, 50))
    );
    println!(
        "simnet_rent_to_lease_ms_p99: {:.0}",
        ms(percentile(&lease, 99))
    );
    println!(
        "simnet_wall_s_p50: {:.2}",
        percentile(&walls, 50).as_secs_f64()
    );
    Ok(())
}

/// Whether `name` is an executable file in a `PATH` directory.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Rent-to-first-packet over whole `simnet --netns` runs (2 providers, 10 renters each): real
/// WireGuard tunnels in network namespaces, timed from the start of `rent` to the first TCP
/// connection from the leased IPv4 address through the tunnel. Needs root and wireguard-go;
/// `LEASEWIRE_BENCH_NETNS_RUNS` sets the number of runs (default 2, 0 skips). Each run takes
/// about a minute and a half: the runner also checks suspension, resumption and a provider
/// restart of every lease.
fn bench_netns() -> anyhow::Result<()> {
    let runs: usize = std::env::var("LEASEWIRE_BENCH_NETNS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if runs == 0 {
        println!("netns: skipped (LEASEWIRE_BENCH_NETNS_RUNS=0)");
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !on_path("wireguard-go") {
        println!("netns: SKIPPED (needs root and wireguard-go)");
        return Ok(());
    }
    let Some(simnet) = simnet_binary() else {
        println!(
            "netns: SKIPPED: no simnet binary next to the bench; run `cargo build --release --workspace` first"
        );
        return Ok(());
    };
    let mut first = Vec::new();
    for run in 0..runs {
        let out = std::process::Command::new(&simnet)
            .args(["--netns", "--providers", "2", "--renters", "10", "--json"])
            .stderr(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", simnet.display()))?;
        ensure!(
            out.status.success(),
            "simnet --netns run {run} failed: {}",
            out.status
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("simnet --netns JSON")?;
        for r in v["rentals"].as_array().context("rentals array")? {
            if let Some(ms) = r["first_packet_ms"].as_u64() {
                first.push(Duration::from_millis(ms));
            }
        }
    }
    ensure!(!first.is_empty(), "no rental reported first_packet_ms");
    first.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("netns_runs: {runs} (2 providers, 10 renters each)");
    println!("netns_rentals: {}", first.len());
    println!(
        "netns_rent_to_first_packet_ms_p50: {:.0}",
        ms(percentile(&first, 50))
    );
    println!(
        "netns_rent_to_first_packet_ms_p99: {:.0}",
        ms(percentile(&first, 99))
    );
    Ok(())
}

/// A payload shaped like a real payment event, so entry sizes are realistic (~350 bytes stored).
#[derive(Serialize)]
struct PaymentEvent {
    lease_id: String,
    amount_msat: u64,
    #[serde(with = "serde_bytes")]
    payment_hash: [u8; 32],
    peer: String,
}

fn payment_event(i: u64) -> PaymentEvent {
    PaymentEvent {
        lease_id: format!("lease-{i:08}"),
        amount_msat: 21_000 + i,
        payment_hash: [(i % 251) as u8; 32],
        peer: "12D3KooWLeasewireBenchPeer000000000000000000000000000".to_owned(),
    }
}

/// Entries of the one-appender run.
const AUDIT_ENTRIES: u64 = 2000;
/// Concurrent appenders, each awaiting every one of its appends, and appends per appender.
const AUDIT_APPENDERS: u64 = 64;
const AUDIT_PER_APPENDER: u64 = 100;
/// Batches of `AUDIT_BATCH` entries in the batch run.
const AUDIT_BATCHES: u64 = 50;
const AUDIT_BATCH: u64 = 1000;
/// Rounds of every audit phase; the best round is reported.
const AUDIT_ROUNDS: u64 = 3;
/// Signatures in the single-thread ed25519 baseline.
const ED25519_OPS: usize = 20_000;

/// A payload shaped like the Hypercore anchor's entry (../shared/anchors/hypercore.mjs: about
/// 200 bytes of JSON there, about 190 bytes of CBOR here), so the two logs write comparable
/// entries.
#[derive(Serialize)]
struct AnchorEvent {
    seq: u64,
    ts: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    peer: String,
    item: String,
    price: u64,
    note: String,
}

fn anchor_event(i: u64) -> AnchorEvent {
    AnchorEvent {
        seq: i,
        ts: 1_700_000_000_000 + i,
        kind: "order",
        peer: "ab".repeat(32),
        item: format!("item-{}", i % 977),
        price: (i * 7919) % 100_000,
        note: "x".repeat(40),
    }
}

/// Audit log: durable appends (one appender; 64 concurrent appenders; batches of 1000),
/// reopen, full verification, export, and a single-thread ed25519 baseline.
///
/// Appends go through the log's writer thread, which group-commits: every append is flushed
/// before it is acknowledged, and appends that are queued together share one flush. The host
/// is shared and noisy, so each throughput is the best of [`AUDIT_ROUNDS`] rounds (the
/// phases alternate, so every phase sees the same conditions), and so is the ed25519
/// baseline it is compared with.
fn bench_audit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let path = dir.path().join("db");
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;

    let appended = {
        let db = sled::open(&path).context("open sled")?;
        let log = AuditLog::open(&db, key.clone())?;
        let mut body = Vec::new();
        ciborium::into_writer(&anchor_event(AUDIT_ENTRIES), &mut body)?;
        println!("audit_payload_bytes: {}", body.len());

        let (mut single, mut concurrent, mut batch) = (0f64, 0f64, 0f64);
        let mut latencies = Vec::new();
        let mut appended = 0;
        for round in 0..AUDIT_ROUNDS {
            // One appender awaiting each entry, with per-append latency.
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for i in 0..AUDIT_ENTRIES {
                    let t = Instant::now();
                    log.append_async(AuditKind::OfferSeen, &anchor_event(i))
                        .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(start.elapsed())
            })?;
            single = single.max(per_sec(AUDIT_ENTRIES, elapsed));

            // 64 concurrent appenders, each awaiting durability of every append.
            let total = AUDIT_APPENDERS * AUDIT_PER_APPENDER;
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..AUDIT_APPENDERS)
                    .map(|t| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            for i in 0..AUDIT_PER_APPENDER {
                                log.append_async(
                                    AuditKind::OfferSeen,
                                    &anchor_event(round * 10_000_000 + t * 1_000_000 + i),
                                )
                                .await?;
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.context("appender task")??;
                }
                anyhow::Ok(start.elapsed())
            })?;
            concurrent = concurrent.max(per_sec(total, elapsed));

            // Batches of 1000, each awaited.
            let batched = AUDIT_BATCHES * AUDIT_BATCH;
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for b in 0..AUDIT_BATCHES {
                    let entries = (0..AUDIT_BATCH)
                        .map(|i| (AuditKind::OfferSeen, anchor_event(b * AUDIT_BATCH + i)))
                        .collect();
                    let range = log.append_batch(entries).await?;
                    ensure!(range.end - range.start == AUDIT_BATCH, "short batch");
                }
                anyhow::Ok(start.elapsed())
            })?;
            batch = batch.max(per_sec(batched, elapsed));
            appended += AUDIT_ENTRIES + total + batched;
        }
        ensure!(log.len() == appended, "unexpected log length");

        println!("audit_rounds: {AUDIT_ROUNDS} (best round shown)");
        println!("audit_append_per_sec: {single:.0}");
        latencies.sort_unstable();
        println!(
            "audit_append_p50_us: {}",
            percentile(&latencies, 50).as_micros()
        );
        println!(
            "audit_append_p99_us: {}",
            percentile(&latencies, 99).as_micros()
        );
        println!("audit_append_concurrent_per_sec: {concurrent:.0} ({AUDIT_APPENDERS} appenders)");
        println!(
            "audit_append_concurrent_vs_single: {:.1}x",
            concurrent / single
        );
        println!("audit_append_batch1000_per_sec: {batch:.0}");
        let size: u64 = log
            .tree()
            .iter()
            .values()
            .map(|v| v.map(|v| v.len() as u64))
            .sum::<Result<u64, _>>()?;
        println!("audit_entry_bytes_avg: {}", size / appended);
        appended
    };

    // Reopen: head recovery reads only the last entry.
    let db = sled::open(&path).context("reopen sled")?;
    let start = Instant::now();
    let log = AuditLog::open(&db, key.clone())?;
    println!("audit_open_us: {}", start.elapsed().as_micros());
    let n = log.len();
    ensure!(n == appended, "reopened log has {n} of {appended} entries");

    // Baseline: one core, one `verify_strict` per signature, over messages of the size an
    // entry signature covers (domain tag + 32-byte hash).
    let messages: Vec<Vec<u8>> = (0..ED25519_OPS)
        .map(|i| {
            let mut m = audit::SIG_DOMAIN.to_vec();
            m.extend_from_slice(&sha2::Sha256::digest(i.to_be_bytes()));
            m
        })
        .collect();
    let signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
    let public = key.verifying_key();

    let (mut verify_rate, mut ed_rate) = (0f64, 0f64);
    for _ in 0..AUDIT_ROUNDS {
        let start = Instant::now();
        let report = audit::verify(log.tree(), &key.verifying_key());
        let elapsed = start.elapsed();
        ensure!(
            report.ok,
            "bench log failed to verify: {:?}",
            report.first_bad
        );
        ensure!(
            report.entries == n,
            "verify saw {} of {n} entries",
            report.entries
        );
        verify_rate = verify_rate.max(per_sec(n, elapsed));

        let start = Instant::now();
        for (m, s) in messages.iter().zip(&signatures) {
            public.verify_strict(m, s).context("baseline signature")?;
        }
        ed_rate = ed_rate.max(per_sec(ED25519_OPS as u64, start.elapsed()));
    }
    println!("audit_verify_entries: {n}");
    println!("audit_verify_per_sec: {verify_rate:.0}");
    println!("ed25519_verify_msg_bytes: {}", messages[0].len());
    println!("ed25519_verify_per_sec: {ed_rate:.0}");
    println!("audit_verify_vs_ed25519: {:.1}x", verify_rate / ed_rate);

    let start = Instant::now();
    let written = audit::export_jsonl(log.tree(), std::io::sink())?;
    let elapsed = start.elapsed();
    ensure!(written == n, "export wrote {written} of {n} entries");
    println!("audit_export_per_sec: {:.0}", per_sec(n, elapsed));

    // Proofs from the log's own stored Merkle nodes (sled reads).
    let size = log.signed_head().head.size;
    let start = Instant::now();
    let mut proofs = Vec::new();
    for i in 0..PROOF_OPS {
        proofs.push(log.inclusion_proof((i * 7919) % size, size)?);
    }
    println!(
        "audit_inclusion_make_us: {:.1} (log of {size}, stored nodes)",
        start.elapsed().as_secs_f64() * 1e6 / PROOF_OPS as f64
    );
    bench_merkle_million()?;
    Ok(())
}

/// Proofs made and verified per measurement.
const PROOF_OPS: u64 = 1_000;
/// Leaves of the in-memory tree of the proof bench.
const MERKLE_LEAVES: u64 = 1_000_000;

/// Every perfect-subtree root of a tree, level by level (level 0: the leaf hashes).
struct Levels(Vec<Vec<audit::merkle::Hash>>);

impl audit::merkle::NodeSource for Levels {
    fn perfect(&self, level: u8, index: u64) -> Result<audit::merkle::Hash, audit::AuditError> {
        self.0
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| audit::AuditError::Task(format!("no node {level}/{index}")))
    }
}

/// Inclusion and consistency proofs, made and verified, in a tree of a million entries.
fn bench_merkle_million() -> anyhow::Result<()> {
    use audit::merkle::{
        consistency_proof, inclusion_proof, leaf_hash, node_hash, root_at, verify_consistency,
        verify_inclusion,
    };
    let start = Instant::now();
    let mut levels = vec![
        (0..MERKLE_LEAVES)
            .map(|i| leaf_hash(&sha2::Sha256::digest(i.to_be_bytes())))
            .collect::<Vec<_>>(),
    ];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().expect("a level");
        let up: Vec<_> = below
            .chunks_exact(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
        levels.push(up);
    }
    let tree = Levels(levels);
    let n = MERKLE_LEAVES;
    let root = root_at(&tree, n)?;
    println!("merkle_build_1m_ms: {}", start.elapsed().as_millis());

    let start = Instant::now();
    let proofs = (0..PROOF_OPS)
        .map(|i| inclusion_proof(&tree, (i * 7919) % n, n))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "merkle_inclusion_make_us: {:.1} (1M entries)",
        start.elapsed().as_secs_f64() * 1e6 / PROOF_OPS as f64
    );
    let start = Instant::now();
    for (i, p) in (0..PROOF_OPS).zip(&proofs) {
        let index = (i * 7919) % n;
        verify_inclusion(&tree.0[0][index as usize], index, n, p, &root)
            .map_err(|e| anyhow::anyhow!("inclusion proof {index}: {e}"))?;
    }
    println!(
        "merkle_inclusion_verify_us: {:.1} (1M entries, {} hashes)",
        start.elapsed().as_secs_f64() * 1e6 / PROOF_OPS as f64,
        proofs[0].len()
    );

    let olds: Vec<u64> = (0..PROOF_OPS)
        .map(|i| 1 + (i * 104_729) % (n - 1))
        .collect();
    let old_roots = olds
        .iter()
        .map(|&m| root_at(&tree, m))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let proofs = olds
        .iter()
        .map(|&m| consistency_proof(&tree, m, n))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "merkle_consistency_make_us: {:.1} (1M entries)",
        start.elapsed().as_secs_f64() * 1e6 / PROOF_OPS as f64
    );
    let start = Instant::now();
    for ((m, old_root), p) in olds.iter().zip(&old_roots).zip(&proofs) {
        verify_consistency(*m, n, old_root, &root, p)
            .map_err(|e| anyhow::anyhow!("consistency proof from {m}: {e}"))?;
    }
    println!(
        "merkle_consistency_verify_us: {:.1} (1M entries)",
        start.elapsed().as_secs_f64() * 1e6 / PROOF_OPS as f64
    );
    Ok(())
}

/// Payments in the log the spending-limit bench reads.
const LIMITS_PAYMENTS: u64 = 5_000;

/// Spending limits are checked before every payment by reading the payer's whole audit log (no
/// cap on how far back): the cost of one check against a log of `LIMITS_PAYMENTS` payments
/// (an attempt and an outcome each) among as many unrelated entries.
fn bench_limits() -> anyhow::Result<()> {
    use leasewire::market::limits::{self, LimitsConfig, Proposed};
    let dir = tempfile::tempdir().context("tempdir")?;
    let db = sled::open(dir.path().join("db")).context("open sled")?;
    let log = AuditLog::open(&db, SigningKey::from_bytes(&[8u8; 32]))?;
    let provider = "12D3KooWLeasewireBenchPeer000000000000000000000000000";
    for i in 0..LIMITS_PAYMENTS {
        let hash = format!("{i:064x}");
        log.append(
            AuditKind::PaymentAttempt,
            &serde_json::json!({"payment_hash": hash, "amount_sat": 1000, "provider": provider,
                "lease_id": format!("lease-{}", i % 7), "request_id": hash,
                "purpose": "topup", "fee_limit_msat": 10_000}),
        )?;
        log.append(
            AuditKind::PaymentSucceeded,
            &serde_json::json!({"payment_hash": hash, "amount_msat": 1_000_000,
                "fee_msat": 1000, "provider": provider}),
        )?;
        log.append(AuditKind::OfferSeen, &payment_event(i))?;
    }
    let cfg: LimitsConfig = leasewire::config::Config::from_toml(
        "[renter.limits]\nmax_amount_per_period = 1000000000\nmax_transactions_per_period = 1000000\n")?
    .renter
    .limits;
    let proposed = Proposed {
        now: leasewire::types::now_unix(),
        amount_sat: 1000,
        fee_limit_sat: 10,
        provider: provider.to_owned(),
        lease_id: "lease-1".to_owned(),
    };
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let history = limits::history_from_audit(&log)?;
        ensure!(
            history.len() as u64 == LIMITS_PAYMENTS,
            "history has {} payments",
            history.len()
        );
        limits::check(&cfg, &history, &proposed)
            .map_err(|r| anyhow::anyhow!("bench payment refused: {r}"))?;
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    println!(
        "limits_check_entries: {} ({LIMITS_PAYMENTS} payments)",
        log.len()
    );
    println!(
        "limits_check_p50_ms: {:.2}",
        percentile(&samples, 50).as_secs_f64() * 1e3
    );
    println!(
        "limits_check_p99_ms: {:.2}",
        percentile(&samples, 99).as_secs_f64() * 1e3
    );
    Ok(())
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The `pct`-th percentile of sorted, non-empty `samples`.
fn percentile(samples: &[Duration], pct: usize) -> Duration {
    let idx = (samples.len() * pct / 100).min(samples.len().saturating_sub(1));
    samples.get(idx).copied().unwrap_or_default()
}
