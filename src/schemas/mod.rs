//! Event schemas (SPEC section 9): a registry of JSON Schemas per event
//! type in a JetStream key-value bucket, versions, validation of typed
//! publishes and compatibility checks of new versions.
//!
//! The pure core is [`compat::check`] and [`validate`]; the registry keeps
//! compiled validators in memory, fed by a watch on the bucket, so the
//! publish path never reads NATS.

pub mod compat;
pub mod validate;
