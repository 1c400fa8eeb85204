//! leasewire: a peer-to-peer marketplace for public static IP addresses.
//!
//! Providers advertise signed offers for spare IPv4 /32../28 and IPv6 /64../56 prefixes on a
//! Kademlia DHT key derived from a shared secret; renters discover them, pay a BOLT11 invoice
//! from their own LND node and receive a signed lease plus a WireGuard tunnel that carries the
//! leased addresses.
//!
//! Module map (dependencies point downwards only):
//!
//! - [`types`]: plain data shared everywhere (terms, prefixes, time).
//! - [`wire`]: protocol messages, signed envelopes, framing. No I/O.
//! - [`net`]: libp2p swarm, DHT topic derivation, membership handshake, request/response.
//! - [`lightning`]: the [`lightning::LightningNode`] trait, LND gRPC backend, BOLT11 checks.
//! - [`tunnel`]: the [`tunnel::Tunnel`] trait and its backends.
//! - [`audit`]: the append-only, signed, hash-chained audit log on sled.
//! - [`market`]: provider and renter logic; sees the traits above only.
//! - [`node`]: wires everything together and owns the daemon's tasks.
//! - [`control`]: the daemon's local gRPC control API over a Unix socket.
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
