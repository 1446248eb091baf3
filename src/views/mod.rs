//! SQL on FHIR v2 views: a ViewDefinition runner over the project's FHIRPath engine.
//!
//! - [`definition`]: the ViewDefinition read and checked up front ([`View`]).
//! - [`run`]: the rows a view makes of one resource ([`rows`]).
//! - [`output`]: CSV, NDJSON, JSON and Parquet output, row by row; [`parquet`] the
//!   hand-written Parquet writer (and the reader its tests use).
//! - [`source`]: resources from NDJSON files or from the store, one at a time.
//! - [`cli`]: `view run`. The server's `$run` operation is in `serve::views`.

pub mod cli;
pub mod definition;
pub mod output;
pub mod parquet;
pub mod run;
pub mod source;

pub use definition::{parse_view, view_from_json, ColumnInfo, View};
pub use output::{Format, RowWriter};
pub use run::{rows, Cell, Row};

/// What can go wrong with a view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The ViewDefinition is not valid; `at` is the place in it (`select[0].column[1]`).
    #[error("invalid ViewDefinition at {at}: {message}")]
    Invalid {
        /// Where in the ViewDefinition.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// Running the view on a resource failed.
    #[error("{resource}: {message}")]
    Eval {
        /// `Type/id` of the resource.
        resource: String,
        /// What failed.
        message: String,
    },
    /// An input resource could not be read (`file:line: message`).
    #[error("{0}")]
    Input(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_views.rs"));
}

/// The ViewDefinitions shipped in `profiles/views/`: (file name, JSON text).
pub fn shipped() -> &'static [(&'static str, &'static str)] {
    embedded::EMBEDDED_VIEWS
}

/// The text of a shipped ViewDefinition named by a reference: `ViewDefinition/ID`, its
/// canonical `url` (optionally `|version`), or its `name`.
pub fn shipped_view(reference: &str) -> Option<&'static str> {
    let wanted = reference.split('|').next().unwrap_or(reference);
    let id = wanted.strip_prefix("ViewDefinition/");
    shipped().iter().map(|(_, text)| *text).find(|text| {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
            return false;
        };
        let field = |k: &str| json.get(k).and_then(serde_json::Value::as_str);
        match id {
            Some(id) => field("id") == Some(id),
            None => field("url") == Some(wanted) || field("name") == Some(wanted),
        }
    })
}
