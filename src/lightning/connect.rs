//! Finding and connecting to the operator's LND node from the `[lightning]` configuration.
//!
//! [`connect_from_config`] tries, in order:
//! 1. `lndconnect`: an lndconnect URI carrying address, pinned certificate and macaroon;
//! 2. `tls_cert_path` + `macaroon_path` (both; relative paths are taken from the data dir),
//!    with `address`;
//! 3. autodetection in `lnd_dir` (default `$HOME/.lnd`): `tls.cert` and
//!    `data/chain/bitcoin/<network>/admin.macaroon`, with `address`.
//!
//! The macaroon is a bearer credential and the URI contains it: neither appears in logs, in
//! `Debug` output or in error messages (errors name parameters and files, never values).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tracing::{info, warn};

use super::LightningError;
use super::config::LightningConfig;
use super::lnd::{LndClient, LndConfig, parse_certificate};
use crate::datadir::DataDir;

/// Network names `lightning.network` accepts: what LND reports in `GetInfo.chains[].network`
/// and the directory name under `data/chain/bitcoin/`.
pub const KNOWN_NETWORKS: &[&str] = &[
    "mainnet", "testnet", "testnet4", "signet", "regtest", "simnet",
];

/// The gRPC port lndconnect URIs default to when they name none (LND's default).
const DEFAULT_PORT: u16 = 10009;

/// base64url as lndconnect writes it (unpadded), also accepting padded input.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which configuration source [`connect_from_config`] used. `Display` is a sentence without
/// secrets, fit for logs and status output.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LndSource {
    /// The `lightning.lndconnect` URI.
    Lndconnect,
    /// `lightning.tls_cert_path` and `lightning.macaroon_path`.
    Paths,
    /// The standard files found under an LND directory.
    Autodetect {
        /// The LND directory the files were found in.
        lnd_dir: PathBuf,
    },
}

impl fmt::Display for LndSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LndSource::Lndconnect => f.write_str("lightning.lndconnect URI"),
            LndSource::Paths => f.write_str("lightning.tls_cert_path and lightning.macaroon_path"),
            LndSource::Autodetect { lnd_dir } => write!(
                f,
                "tls.cert and admin.macaroon autodetected in {}",
                lnd_dir.display()
            ),
        }
    }
}

/// A parsed lndconnect URI. `Debug` shows only the address.
#[derive(Clone, PartialEq, Eq)]
pub struct LndConnect {
    /// gRPC `host:port` (IPv6 hosts in brackets).
    pub address: String,
    /// The pinned certificate, DER.
    pub cert_der: Vec<u8>,
    /// The raw macaroon bytes.
    pub macaroon: Vec<u8>,
}

impl fmt::Debug for LndConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LndConnect")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn config_err(msg: impl Into<String>) -> LightningError {
    LightningError::Config(msg.into())
}

/// Decodes `%XX` escapes (query values may have `=` padding escaped). Errors never quote the
/// input.
fn percent_decode(s: &str, param: &str) -> Result<String, LightningError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config_err(format!("bad %-escape in the {param} parameter")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config_err(format!("the {param} parameter is not UTF-8")))
}

impl LndConnect {
    /// Parses `lndconnect://host[:port]?cert=<base64url DER>&macaroon=<base64url>`.
    ///
    /// The port defaults to 10009. The `cert` parameter is required: leasewire pins LND's
    /// certificate and does not fall back to public CAs.
    ///
    /// # Errors
    /// [`LightningError::Config`] naming the problem (scheme, host, port, a missing, repeated
    /// or undecodable parameter); the message never contains the macaroon or the certificate.
    pub fn parse(uri: &str) -> Result<LndConnect, LightningError> {
        let rest = uri
            .trim()
            .strip_prefix("lndconnect://")
            .ok_or_else(|| config_err("the URI must start with lndconnect://"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let address = parse_authority(authority)?;

        let (mut cert, mut macaroon) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "cert" => &mut cert,
                "macaroon" => &mut macaroon,
                // Unknown parameters are ignored, as other lndconnect consumers do; the key
                // alone is logged (never the value).
                other => {
                    warn!(parameter = other, "ignoring unknown lndconnect parameter");
                    continue;
                }
            };
            if slot.is_some() {
                return Err(config_err(format!("the {key} parameter appears twice")));
            }
            *slot = Some(percent_decode(value, key)?);
        }

        let macaroon = macaroon
            .filter(|m| !m.is_empty())
            .ok_or_else(|| config_err("the URI has no macaroon parameter"))?;
        let macaroon = B64URL
            .decode(macaroon.as_bytes())
            .map_err(|_| config_err("the macaroon parameter is not valid base64url"))?;
        if macaroon.is_empty() {
            return Err(config_err("the macaroon parameter is empty"));
        }
        let cert = cert.filter(|c| !c.is_empty()).ok_or_else(|| {
            config_err(
                "the URI has no cert parameter (LND uses a publicly trusted certificate?); \
                 leasewire pins LND's certificate: generate the URI with the certificate \
                 included, or set lightning.tls_cert_path and lightning.macaroon_path",
            )
        })?;
        let cert_der = B64URL
            .decode(cert.as_bytes())
            .map_err(|_| config_err("the cert parameter is not valid base64url"))?;
        // Checked now so a bad URI fails at config validation, not at the first connect.
        parse_certificate(&cert_der)
            .map_err(|_| config_err("the cert parameter is not a DER certificate"))?;
        Ok(LndConnect {
            address,
            cert_der,
            macaroon,
        })
    }
}

/// `host[:port]` → `host:port`, keeping IPv6 brackets.
fn parse_authority(authority: &str) -> Result<String, LightningError> {
    if authority.is_empty() {
        return Err(config_err("the URI has no host"));
    }
    if authority.contains('@') {
        return Err(config_err("the URI must not contain user information"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| config_err("unterminated [IPv6] host in the URI"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| config_err("garbage after the [IPv6] host in the URI"))?,
            ),
        };
        (Cow::Owned(format!("[{host}]")), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (Cow::Borrowed(h), Some(p)),
            None => (Cow::Borrowed(authority), None),
        }
    };
    if host.is_empty() || host.as_ref() == "[]" {
        return Err(config_err("the URI has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            // Quote the port only when it is a short number: without its `?`, the text
            // after the last `:` is the whole query with the macaroon in it (found by
            // fuzz/ lndconnect), and errors never quote secrets.
            if !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()) {
                config_err(format!("bad port {p:?} in the URI"))
            } else {
                config_err("bad port in the URI: not a number from 1 to 65535")
            }
        })?,
    };
    Ok(format!("{host}:{port}"))
}

/// Builds an lndconnect URI for `address` (`host:port`) with the certificate (DER) and raw
/// macaroon, the inverse of [`LndConnect::parse`].
///
/// The result is a secret (it grants the macaroon's permissions): do not log it.
pub fn lndconnect_uri(address: &str, cert_der: &[u8], macaroon: &[u8]) -> String {
    format!(
        "lndconnect://{address}?cert={}&macaroon={}",
        B64URL.encode(cert_der),
        B64URL.encode(macaroon)
    )
}

/// The files autodetection uses in `lnd_dir` for `network`: `(tls.cert, admin.macaroon)`.
pub fn autodetect_paths(lnd_dir: &Path, network: &str) -> (PathBuf, PathBuf) {
    (
        lnd_dir.join("tls.cert"),
        lnd_dir
            .join("data")
            .join("chain")
            .join("bitcoin")
            .join(network)
            .join("admin.macaroon"),
    )
}

/// The LND directory to autodetect in: `lightning.lnd_dir` (a leading `~/` is the home dir;
/// relative paths are taken from the data dir), else `$HOME/.lnd`.
fn lnd_dir(cfg: &LightningConfig, data_dir: &Path) -> Result<PathBuf, LightningError> {
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                config_err(
                    "HOME is not set, so LND's directory cannot be autodetected: set \
                     lightning.lnd_dir, or lightning.tls_cert_path and lightning.macaroon_path, \
                     or lightning.lndconnect",
                )
            })
    };
    match &cfg.lnd_dir {
        None => Ok(home()?.join(".lnd")),
        Some(dir) => match dir.strip_prefix("~") {
            Ok(rest) => Ok(home()?.join(rest)),
            Err(_) => Ok(DataDir::new(data_dir).resolve(dir)),
        },
    }
}

/// Connects to LND as `[lightning]` says (see the module docs for the order) and returns the
/// client and the source used. Logs the source and address at info level, never secrets.
///
/// This does not check the node's network; callers compare `get_info().network` with
/// `cfg.network`.
///
/// # Errors
/// [`LightningError::Config`] for a bad lndconnect URI, only one of the two paths set, or
/// autodetection not finding its files (the message lists the files looked for, which are
/// missing, and the other ways to configure); otherwise what [`LndClient::connect`] /
/// [`LndClient::connect_with`] return ([`LightningError::Io`], [`LightningError::Tls`],
/// [`LightningError::Connect`]).
pub async fn connect_from_config(
    cfg: &LightningConfig,
    data_dir: &Path,
) -> Result<(LndClient, LndSource), LightningError> {
    if !cfg.lndconnect.is_empty() {
        if cfg.address.is_some() || cfg.tls_cert_path.is_some() || cfg.macaroon_path.is_some() {
            warn!(
                "lightning.lndconnect is set: ignoring lightning.address, tls_cert_path and \
                 macaroon_path"
            );
        }
        let uri = LndConnect::parse(&cfg.lndconnect)?;
        let source = LndSource::Lndconnect;
        info!(address = %uri.address, %source, "connecting to LND");
        let client = LndClient::connect_with(&uri.address, &uri.cert_der, &uri.macaroon).await?;
        return Ok((client, source));
    }

    let address = cfg.address_or_default().to_owned();
    match (&cfg.tls_cert_path, &cfg.macaroon_path) {
        (Some(cert), Some(macaroon)) => {
            let source = LndSource::Paths;
            let lnd = LndConfig {
                address,
                tls_cert_path: DataDir::new(data_dir).resolve(cert),
                macaroon_path: DataDir::new(data_dir).resolve(macaroon),
            };
            info!(address = %lnd.address, cert = %lnd.tls_cert_path.display(),
                macaroon = %lnd.macaroon_path.display(), %source, "connecting to LND");
            Ok((LndClient::connect(&lnd).await?, source))
        }
        (Some(_), None) | (None, Some(_)) => Err(config_err(
            "lightning.tls_cert_path and lightning.macaroon_path must be set together (or \
             neither, to autodetect them in lightning.lnd_dir)",
        )),
        (None, None) => {
            let dir = lnd_dir(cfg, data_dir)?;
            let (cert, macaroon) = autodetect_paths(&dir, &cfg.network);
            let missing: Vec<&Path> = [cert.as_path(), macaroon.as_path()]
                .into_iter()
                .filter(|p| !p.is_file())
                .collect();
            if !missing.is_empty() {
                let list = |ps: &[&Path]| {
                    ps.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(config_err(format!(
                    "autodetecting LND in {} (network {}) looked for {} and {}; missing: {}. \
                     Set lightning.lnd_dir to LND's directory, or lightning.tls_cert_path and \
                     lightning.macaroon_path, or lightning.lndconnect",
                    dir.display(),
                    cfg.network,
                    cert.display(),
                    macaroon.display(),
                    list(&missing)
                )));
            }
            let source = LndSource::Autodetect { lnd_dir: dir };
            let lnd = LndConfig {
                address,
                tls_cert_path: cert,
                macaroon_path: macaroon,
            };
            info!(address = %lnd.address, %source, "connecting to LND");
            Ok((LndClient::connect(&lnd).await?, source))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER-shaped blob (SEQUENCE { SEQUENCE {..} .. }): enough for the structural check.
    fn fake_der() -> Vec<u8> {
        let mut der = vec![0x30, 0x82, 0x01, 0x04, 0x30, 0x82, 0x01, 0x00];
        der.extend((0..=255u8).collect::<Vec<_>>());
        der
    }

    const MACAROON: &[u8] = b"\x02\x01\x03lnd-secret-macaroon-bytes";

    fn secret_b64() -> String {
        B64URL.encode(MACAROON)
    }

    #[test]
    fn uri_round_trips() {
        let uri = lndconnect_uri("198.51.100.7:10019", &fake_der(), MACAROON);
        let parsed = LndConnect::parse(&uri).expect("parses");
        assert_eq!(parsed.address, "198.51.100.7:10019");
        assert_eq!(parsed.cert_der, fake_der());
        assert_eq!(parsed.macaroon, MACAROON);
        assert!(!format!("{parsed:?}").contains(&secret_b64()));
        assert!(!format!("{parsed:?}").contains("macaroon: "));
    }

    #[test]
    fn uri_variants() {
        let cert = B64URL.encode(fake_der());
        let mac = secret_b64();
        // Default port, trailing slash, reversed parameter order, padding escaped as %3D.
        let p = LndConnect::parse(&format!(
            "lndconnect://node.example/?macaroon={mac}%3D%3D&cert={cert}&extra=1"
        ))
        .expect("parses");
        assert_eq!(p.address, "node.example:10009");
        assert_eq!(p.macaroon, MACAROON);
        let p = LndConnect::parse(&format!(
            "lndconnect://[2001:db8::1]:8443?cert={cert}&macaroon={mac}"
        ))
        .expect("IPv6");
        assert_eq!(p.address, "[2001:db8::1]:8443");
        let p = LndConnect::parse(&format!(
            "lndconnect://[2001:db8::1]?cert={cert}&macaroon={mac}"
        ))
        .expect("IPv6 default port");
        assert_eq!(p.address, "[2001:db8::1]:10009");
    }

    fn parse_err(uri: &str) -> String {
        match LndConnect::parse(uri) {
            Err(LightningError::Config(m)) => m,
            other => panic!("expected a Config error for {uri}, got {other:?}"),
        }
    }

    #[test]
    fn a_uri_without_its_question_mark_does_not_quote_the_macaroon() {
        // Regression (fuzz/ lndconnect): the text after the last `:` was quoted as the port.
        let mac = secret_b64();
        let cert = B64URL.encode(fake_der());
        let m = parse_err(&format!("lndconnect://h:10009&cert={cert}&macaroon={mac}"));
        assert!(m.contains("bad port"), "{m}");
        assert!(!m.contains(&mac), "{m}");
        let m = parse_err(&format!("lndconnect://h:99999?cert={cert}&macaroon={mac}"));
        assert!(m.contains("\"99999\""), "{m}");
    }

    #[test]
    fn bad_uris_are_refused_without_leaking() {
        let cert = B64URL.encode(fake_der());
        let mac = secret_b64();
        let cases = [
            (
                format!("https://h:1?cert={cert}&macaroon={mac}"),
                "lndconnect://",
            ),
            (
                format!("lndconnect://h:1?macaroon={mac}"),
                "no cert parameter",
            ),
            (
                format!("lndconnect://h:1?cert=&macaroon={mac}"),
                "no cert parameter",
            ),
            (
                format!("lndconnect://h:1?cert={cert}"),
                "no macaroon parameter",
            ),
            (
                format!("lndconnect://h:1?cert={cert}&macaroon={mac}!*"),
                "macaroon parameter is not valid base64url",
            ),
            (
                format!("lndconnect://h:1?cert={mac}&macaroon={mac}"),
                "not a DER certificate",
            ),
            (
                format!("lndconnect://h:1?cert=@@{mac}&macaroon={mac}"),
                "cert parameter is not valid base64url",
            ),
            (
                format!("lndconnect://h:99999?cert={cert}&macaroon={mac}"),
                "bad port",
            ),
            (
                format!("lndconnect://:1?cert={cert}&macaroon={mac}"),
                "no host",
            ),
            (
                format!("lndconnect://u@h:1?cert={cert}&macaroon={mac}"),
                "user information",
            ),
            (
                format!("lndconnect://h:1?cert={cert}&macaroon={mac}&macaroon={mac}"),
                "twice",
            ),
            (
                format!("lndconnect://h:1?cert={cert}&macaroon=%zz{mac}"),
                "%-escape",
            ),
        ];
        for (uri, expected) in cases {
            let msg = parse_err(&uri);
            assert!(msg.contains(expected), "{uri}: {msg}");
            assert!(!msg.contains(&mac), "macaroon leaked: {msg}");
            assert!(!msg.contains(&cert[..20]), "cert leaked: {msg}");
        }
    }

    #[test]
    fn fee_limit_is_the_smaller_of_cap_and_ppm() {
        let mut cfg = LightningConfig {
            fee_limit_sat: 50,
            fee_limit_ppm: 10_000,
            ..Default::default()
        };
        // 1% of 1000 sat = 10 sat, under the 50 sat cap.
        assert_eq!(cfg.fee_limit_msat(1_000_000), 10_000);
        // 1% of 1 BTC is far over the cap.
        assert_eq!(cfg.fee_limit_msat(100_000_000_000), 50_000);
        // Rounded up: 1% of 1 msat is 0.01 msat -> 1.
        assert_eq!(cfg.fee_limit_msat(1), 1);
        assert_eq!(cfg.fee_limit_msat(0), 0);
        cfg.fee_limit_ppm = 0;
        assert_eq!(cfg.fee_limit_msat(1), 50_000);
        cfg.fee_limit_sat = u64::MAX;
        cfg.fee_limit_ppm = 1_000_000;
        assert_eq!(cfg.fee_limit_msat(u64::MAX), u64::MAX);
    }

    #[test]
    fn config_debug_redacts_uri_and_validation_names_keys() {
        let uri = lndconnect_uri("198.51.100.7:10009", &fake_der(), MACAROON);
        let cfg = LightningConfig {
            lndconnect: uri.clone(),
            ..Default::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains(&secret_b64()),
            "{dbg}"
        );
        cfg.validate().expect("valid");

        let bad = LightningConfig {
            lndconnect: format!("{uri}!"),
            ..Default::default()
        };
        let e = bad.validate().expect_err("bad macaroon").to_string();
        assert!(
            e.contains("lightning.lndconnect") && !e.contains(&secret_b64()),
            "{e}"
        );
        let one_path = LightningConfig {
            tls_cert_path: Some("tls.cert".into()),
            ..Default::default()
        };
        assert!(
            one_path
                .validate()
                .expect_err("one path")
                .to_string()
                .contains("together")
        );
        let net = LightningConfig {
            network: "bitcoin".into(),
            ..Default::default()
        };
        assert!(
            net.validate()
                .expect_err("network")
                .to_string()
                .contains("lightning.network")
        );
        let ppm = LightningConfig {
            fee_limit_ppm: 1_000_001,
            ..Default::default()
        };
        assert!(ppm.validate().is_err());
    }

    #[test]
    fn toml_keys_parse_and_defaults_round_trip() {
        let cfg: LightningConfig = toml::from_str(
            "address = \"127.0.0.1:10019\"\ntls_cert_path = \"/l/tls.cert\"\n\
             macaroon_path = \"m/admin.macaroon\"\nfee_limit_ppm = 0\n",
        )
        .expect("parse");
        assert_eq!(cfg.address.as_deref(), Some("127.0.0.1:10019"));
        assert_eq!(cfg.tls_cert_path.as_deref(), Some(Path::new("/l/tls.cert")));
        assert_eq!(cfg.fee_limit_ppm, 0);
        assert_eq!(cfg.fee_limit_sat, 50);
        let def = LightningConfig::default();
        let text = toml::to_string(&def).expect("serialize");
        assert_eq!(
            toml::from_str::<LightningConfig>(&text).expect("parse"),
            def
        );
        assert_eq!(def.address_or_default(), "127.0.0.1:10009");
    }

    #[test]
    fn autodetect_layout() {
        let (c, m) = autodetect_paths(Path::new("/home/u/.lnd"), "mainnet");
        assert_eq!(c, Path::new("/home/u/.lnd/tls.cert"));
        assert_eq!(
            m,
            Path::new("/home/u/.lnd/data/chain/bitcoin/mainnet/admin.macaroon")
        );
    }

    #[tokio::test]
    async fn autodetect_names_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("tls.cert"), b"x").expect("write");
        let cfg = LightningConfig {
            lnd_dir: Some(dir.path().to_owned()),
            network: "signet".into(),
            ..Default::default()
        };
        let err = connect_from_config(&cfg, Path::new("/nonexistent"))
            .await
            .expect_err("macaroon missing");
        let msg = err.to_string();
        let (cert, mac) = autodetect_paths(dir.path(), "signet");
        assert!(matches!(err, LightningError::Config(_)));
        assert!(msg.contains(&cert.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("missing: {}.", mac.display())),
            "{msg}"
        );
        assert!(msg.contains("lightning.lndconnect"), "{msg}");

        // Relative lnd_dir is taken from the data dir.
        let cfg = LightningConfig {
            lnd_dir: Some("lnd".into()),
            ..Default::default()
        };
        let msg = connect_from_config(&cfg, dir.path())
            .await
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains(&dir.path().join("lnd/tls.cert").display().to_string()),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn one_path_is_a_config_error() {
        let cfg = LightningConfig {
            macaroon_path: Some("admin.macaroon".into()),
            ..Default::default()
        };
        let err = connect_from_config(&cfg, Path::new("/"))
            .await
            .expect_err("one path");
        assert!(
            matches!(err, LightningError::Config(ref m) if m.contains("together")),
            "{err}"
        );
    }

    #[test]
    fn source_display_has_no_secrets() {
        assert!(LndSource::Lndconnect.to_string().contains("lndconnect"));
        assert!(LndSource::Paths.to_string().contains("macaroon_path"));
        let s = LndSource::Autodetect {
            lnd_dir: "/home/u/.lnd".into(),
        };
        assert!(s.to_string().contains("/home/u/.lnd"));
    }
}
