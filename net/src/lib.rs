//! What every listener of Veil shares (`veil-server`, `veil broker`, `veil proxy`): caps on
//! the connections open at once, in all and per peer address ([`Caps`]); the pacing of an
//! accept loop while `accept()` fails ([`AcceptBackoff`]); and raising the soft limit on
//! open descriptors at start ([`raise_descriptor_limit`]). No I/O of its own and no
//! logging: each caller logs in its own way.

#![forbid(unsafe_code)]

mod backoff;
mod caps;
mod descriptors;

pub use backoff::AcceptBackoff;
pub use caps::{Cap, CapCounters, Caps, Slot};
pub use descriptors::{
    effective_total_cap, raise_descriptor_limit, DescriptorLimit, RESERVED_DESCRIPTORS,
};
