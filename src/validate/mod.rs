//! Validation of resources against the base specification and the study profiles: the
//! `validate` stage of the pipeline (ingest ──> map ──> **validate** ──> pseudonymize ──>
//! store ──> serve). It reads conformance resources from a
//! [`Registry`](crate::definitions::Registry) and reports problems; it never changes data.
//!
//! - [`terminology`]: ValueSet expansion and code membership for bindings and Codings.

pub mod terminology;
