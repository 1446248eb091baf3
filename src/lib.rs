//! The A-IMAGIO data gateway.
#![warn(missing_docs)]
pub mod audit;
pub mod auth;
pub mod bench;
pub mod client;
pub mod definitions;
pub mod endpoints;
pub mod export;
pub mod fhirpath;
pub mod ingest;
pub mod map;
pub mod model;
pub mod profiles;
pub mod pseudonymize;
pub mod search;
pub mod serve;
pub mod store;
pub mod validate;
pub mod views;
