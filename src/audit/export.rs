//! Export of an audit tree as JSON lines, and the human-readable listing behind `audit show`.
//!
//! Both read a bare `sled::Tree` and need no key. Payloads are decoded from CBOR into JSON:
//! byte strings become lowercase hex strings (hashes and keys read naturally), map keys that
//! are not text are rendered as their JSON text, tags are dropped (their content is kept), and
//! integers outside the `i64`/`u64` range become decimal strings.

use std::io::{BufWriter, Write};

use serde_json::{Map, Number, Value as Json};

use super::{AuditEntry, AuditError, entries_in};

/// Writes one JSON object per entry, in seq order, each on its own line (JSON Lines), and
/// returns the number of entries written.
///
/// Each object has the fields `seq`, `time_ms`, `kind`, `payload` (the CBOR payload decoded
/// into JSON, see the module docs), `prev_hash`, `hash` and `sig` (hex). A payload that is not
/// valid CBOR is written as `"payload": null` plus `"payload_hex"` so damaged logs can still
/// be exported. The output is not a verification: run [`super::verify()`] for that.
///
/// # Errors
/// - [`AuditError::Decode`] if an entry itself cannot be decoded (export stops there; lines
///   already written stay written).
/// - [`AuditError::Sled`] on store failure, [`AuditError::Io`] if writing fails,
///   [`AuditError::Encode`] if JSON encoding fails.
pub fn export_jsonl<W: Write>(tree: &sled::Tree, w: W) -> Result<u64, AuditError> {
    let mut out = BufWriter::new(w);
    let mut count = 0u64;
    for entry in entries_in(tree, 0) {
        let json = entry_json(&entry?);
        serde_json::to_writer(&mut out, &json).map_err(|e| AuditError::Encode {
            what: "JSON line",
            reason: e.to_string(),
        })?;
        out.write_all(b"\n")?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}

/// Lists the log for `audit show`: with `json`, exactly the output of [`export_jsonl`];
/// otherwise one line per entry:
///
/// ```text
///      3  2024-05-01T12:00:00.123Z  lease_issued        {"lease_id":"…"}  hash=1f2e3d4c5b6a7988
/// ```
///
/// Returns the number of entries listed.
///
/// # Errors
/// As [`export_jsonl`].
pub fn show<W: Write>(tree: &sled::Tree, w: W, json: bool) -> Result<u64, AuditError> {
    if json {
        return export_jsonl(tree, w);
    }
    let mut out = BufWriter::new(w);
    let mut count = 0u64;
    for entry in entries_in(tree, 0) {
        let entry = entry?;
        let payload = match decode_payload(&entry.payload) {
            Some(p) => p.to_string(),
            None => format!("<invalid CBOR: {}>", hex::encode(&entry.payload)),
        };
        writeln!(
            out,
            "{:>6}  {}  {:<20} {}  hash={}",
            entry.seq,
            format_time_ms(entry.time_ms),
            entry.kind,
            payload,
            hex::encode(&entry.hash[..8]),
        )?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}

/// The JSON object written for one entry.
fn entry_json(entry: &AuditEntry) -> Json {
    let mut obj = Map::new();
    obj.insert("seq".into(), entry.seq.into());
    obj.insert("time_ms".into(), entry.time_ms.into());
    obj.insert("kind".into(), entry.kind.clone().into());
    match decode_payload(&entry.payload) {
        Some(p) => {
            obj.insert("payload".into(), p);
        }
        None => {
            obj.insert("payload".into(), Json::Null);
            obj.insert("payload_hex".into(), hex::encode(&entry.payload).into());
        }
    }
    obj.insert("prev_hash".into(), hex::encode(entry.prev_hash).into());
    obj.insert("hash".into(), hex::encode(entry.hash).into());
    obj.insert("sig".into(), hex::encode(entry.sig).into());
    Json::Object(obj)
}

/// Decodes a CBOR payload into JSON; `None` if it is not exactly one CBOR item.
fn decode_payload(bytes: &[u8]) -> Option<Json> {
    let mut cursor = std::io::Cursor::new(bytes);
    let value: ciborium::Value = ciborium::from_reader(&mut cursor).ok()?;
    (cursor.position() == bytes.len() as u64).then(|| cbor_to_json(value))
}

/// Converts a CBOR value to JSON following the rules in the module docs.
fn cbor_to_json(value: ciborium::Value) -> Json {
    use ciborium::Value as C;
    match value {
        C::Integer(i) => {
            let i = i128::from(i);
            if let Ok(v) = i64::try_from(i) {
                Json::from(v)
            } else if let Ok(v) = u64::try_from(i) {
                Json::from(v)
            } else {
                // CBOR integers reach -2^64; JSON numbers in most readers cannot.
                Json::String(i.to_string())
            }
        }
        C::Bytes(b) => Json::String(hex::encode(b)),
        C::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        C::Text(s) => Json::String(s),
        C::Bool(b) => Json::Bool(b),
        C::Null => Json::Null,
        C::Tag(_, inner) => cbor_to_json(*inner),
        C::Array(items) => Json::Array(items.into_iter().map(cbor_to_json).collect()),
        C::Map(pairs) => {
            let mut obj = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    C::Text(s) => s,
                    other => match cbor_to_json(other) {
                        Json::String(s) => s,
                        j => j.to_string(),
                    },
                };
                obj.insert(key, cbor_to_json(v));
            }
            Json::Object(obj)
        }
        // `ciborium::Value` is non-exhaustive; anything new is rendered as its debug form
        // rather than failing the export.
        other => Json::String(format!("{other:?}")),
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2024-05-01T12:00:00.123Z`.
fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = crate::types::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{filled_log, payment, temp_db};
    use super::super::{AuditKind, AuditLog, seq_key};
    use super::*;

    #[test]
    fn export_writes_one_decoded_line_per_entry() {
        let (_dir, _db, log) = filled_log(4);
        let mut out = Vec::new();
        assert_eq!(export_jsonl(log.tree(), &mut out).unwrap(), 4);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(text.ends_with('\n'));
        let entries: Vec<_> = log.entries(0).map(|e| e.unwrap()).collect();
        for (i, line) in lines.iter().enumerate() {
            let v: Json = serde_json::from_str(line).unwrap();
            let p = payment(i as u64);
            assert_eq!(v["seq"], i as u64);
            assert_eq!(v["kind"], "payment_succeeded");
            assert_eq!(v["time_ms"], entries[i].time_ms);
            assert_eq!(v["payload"]["lease_id"], p.lease_id);
            assert_eq!(v["payload"]["amount_msat"], p.amount_msat);
            assert_eq!(v["payload"]["hash"], hex::encode(&p.hash));
            assert_eq!(v["hash"], hex::encode(entries[i].hash));
            assert_eq!(v["prev_hash"], hex::encode(entries[i].prev_hash));
            assert_eq!(v["sig"].as_str().unwrap().len(), 128);
        }
    }

    #[test]
    fn export_of_empty_log_writes_nothing() {
        let (_dir, db) = temp_db();
        let mut out = Vec::new();
        let tree = db.open_tree("audit").unwrap();
        assert_eq!(export_jsonl(&tree, &mut out).unwrap(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn export_fails_on_undecodable_entry() {
        let (_dir, _db, log) = filled_log(3);
        log.tree().insert(seq_key(1), &b"junk"[..]).unwrap();
        let mut out = Vec::new();
        let err = export_jsonl(log.tree(), &mut out).unwrap_err();
        assert!(matches!(err, AuditError::Decode { .. }), "{err}");
        // The entry before the damage was still written.
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }

    #[test]
    fn cbor_values_map_to_readable_json() {
        use ciborium::Value as C;
        let v = C::Map(vec![
            (C::Integer(1.into()), C::Bytes(vec![0xab, 0xcd])),
            (C::Text("neg".into()), C::Integer((-5).into())),
            (C::Text("big".into()), C::Integer(u64::MAX.into())),
            (C::Text("f".into()), C::Float(1.5)),
            (C::Text("nan".into()), C::Float(f64::NAN)),
            (
                C::Text("t".into()),
                C::Tag(1, Box::new(C::Integer(7.into()))),
            ),
            (C::Text("a".into()), C::Array(vec![C::Bool(true), C::Null])),
        ]);
        assert_eq!(
            cbor_to_json(v),
            serde_json::json!({
                "1": "abcd", "neg": -5, "big": u64::MAX, "f": 1.5, "nan": null, "t": 7,
                "a": [true, null]
            })
        );
    }

    #[test]
    fn show_lists_human_lines_or_json() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, super::super::tests::test_key(1)).unwrap();
        log.append(
            AuditKind::NodeStarted,
            &serde_json::json!({"version": "0.1.0"}),
        )
        .unwrap();
        log.append(AuditKind::LeaseIssued, &"lease-1").unwrap();

        let mut human = Vec::new();
        assert_eq!(show(log.tree(), &mut human, false).unwrap(), 2);
        let human = String::from_utf8(human).unwrap();
        let lines: Vec<&str> = human.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].trim_start().starts_with("0  "), "{}", lines[0]);
        assert!(lines[0].contains("node_started"));
        assert!(lines[0].contains(r#"{"version":"0.1.0"}"#));
        assert!(lines[1].contains("lease_issued"));
        assert!(lines[1].contains(r#""lease-1""#));
        assert!(lines[1].contains(&format!("hash={}", hex::encode(&log.head().1[..8]))));

        let mut json = Vec::new();
        assert_eq!(show(log.tree(), &mut json, true).unwrap(), 2);
        let mut exported = Vec::new();
        export_jsonl(log.tree(), &mut exported).unwrap();
        assert_eq!(json, exported);
    }

    #[test]
    fn time_formatting_matches_known_dates() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day in a century leap year).
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_time_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_time_ms(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
    }
}
