//! leasewire: a peer-to-peer marketplace for public static IP addresses.
//!
//! Providers advertise signed offers for spare IPv4 /32../28 and IPv6 /64../56 prefixes on a
//! Kademlia DHT key derived from a shared secret; renters discover them, pay a BOLT11 invoice
//! from their own LND node and receive a signed lease plus a WireGuard tunnel that carries the
//! leased addresses.
//!
//! Module map, in layers. A module uses modules of its own layer or of an earlier one, never
//! of a later one (the test in tests/layering.rs reads this list and checks every `crate::…`
//! path of the library against it):
//!
//! 1. [`types`], [`wire`], [`identity`], [`datadir`], [`fsutil`]: the foundations.
//!    - [`types`]: plain data shared everywhere (terms, prefixes, time).
//!    - [`wire`]: protocol messages, signed envelopes, framing. No I/O.
//!    - [`identity`]: the node key and the WireGuard key.
//!    - [`datadir`]: the one type naming every path in the data dir.
//!    - [`fsutil`]: the one private-file writer (0600, fsync, rename, fsync the directory).
//! 2. [`net`], [`lightning`], [`tunnel`], [`audit`]: I/O behind small interfaces.
//!    - [`net`]: libp2p swarm, DHT topic derivation, membership handshake, request/response.
//!    - [`lightning`]: the [`lightning::LightningNode`] trait, LND gRPC backend, BOLT11 checks.
//!    - [`tunnel`]: the [`tunnel::Tunnel`] trait and its backends.
//!    - [`audit`]: the append-only, signed, hash-chained audit log on sled.
//! 3. [`market`]: provider and renter logic; sees the traits above only.
//! 4. [`node`], [`config`]: the node wires everything together behind a
//!    [`node::NodeHandle`]; the config assembles the sections each module owns
//!    (`[node]`, `[lightning]`, `[tunnel]`, `[provider]`, `[renter]`), loads and validates them.
//! 5. [`control`]: the node's local gRPC control API over a Unix socket.
//!
//! The command line (clap, rendering, QR codes, log set-up) is the `leasewire` binary's own
//! code, not part of this library.

pub mod audit;
pub mod config;
pub mod control;
pub mod datadir;
pub mod fsutil;
pub mod identity;
pub mod lightning;
pub mod market;
pub mod net;
pub mod node;
pub mod tunnel;
pub mod types;
pub mod wire;
