//! The cell policy: one JSON document that says what the agent may reach,
//! parsed and validated once, and compiled three ways — DNS answers
//! ([`Policy::resolve_name`]), proxy decisions ([`Policy::connection`]) and
//! the firewall's nftables ruleset ([`nft::compile`]).
//!
//! The document format is described field by field in `docs/policy.md`.

pub mod document;
pub mod host;
pub mod nft;
pub mod path;
pub mod policy;
pub mod secrets;
pub mod upstream;

pub use document::{OverlayDocument, PolicyDocument};
pub use host::{HostPattern, normalize_host};
pub use policy::{
    ConnDecision, DenyReason, FieldError, NameDecision, Origin, Policy, PolicyError, Source,
    allow_hint,
};
