//! leasewire-simnet: tools to run many leasewire nodes on one machine.
//!
//! - [`lndsim`]: an LND-API-compatible Lightning simulator (also the `lnd-sim` binary), so
//!   nodes exercise the real LND gRPC client against a fake network.

pub mod lndsim;
