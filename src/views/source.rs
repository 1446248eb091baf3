//! Where a view's resources come from: NDJSON files (one resource per line) or the store's
//! current resources of the view's type, read in keyset pages so memory does not grow with
//! the data.

use std::io::BufRead;
use std::path::Path;

use super::run::{rows, Row};
use super::{View, ViewError};
use crate::store::Store;

/// Resources per store page.
pub const PAGE: i64 = 500;

/// Runs `view` on every resource of the NDJSON file (lines of other types are skipped),
/// giving each row to `emit`.
///
/// # Errors
/// [`ViewError::Input`] naming `file:line` for a line that is not a FHIR resource, and the
/// errors of running the view and of `emit`.
pub fn ndjson_file(
    view: &View,
    path: &Path,
    emit: &mut dyn FnMut(&Row) -> Result<(), ViewError>,
) -> Result<(), ViewError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ViewError::Input(format!("{}: {e}", path.display())))?;
    let reader = std::io::BufReader::new(file);
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| ViewError::Input(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let resource = crate::model::parse(&line).map_err(|e| {
            ViewError::Input(format!(
                "{}:{}: not a FHIR R4 resource: {e}",
                path.display(),
                i + 1
            ))
        })?;
        for row in rows(view, &resource)
            .map_err(|e| ViewError::Input(format!("{}:{}: {e}", path.display(), i + 1)))?
        {
            emit(&row)?;
        }
    }
    Ok(())
}

/// Runs `view` on the current resources of its type in the store (only `site`'s when
/// given), page by page in id order, giving each row to `emit`.
///
/// # Errors
/// Store failures, a stored resource that does not parse, and the errors of running the
/// view and of `emit`.
pub async fn store(
    view: &View,
    store: &Store,
    site: Option<&str>,
    emit: &mut (dyn FnMut(&Row) -> Result<(), ViewError> + Send),
) -> Result<(), ViewError> {
    let mut after = String::new();
    loop {
        let page = store
            .current_page(&view.resource, site, &after, PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after.clone_from(last);
        for (id, content) in &page {
            let resource = crate::model::parse(content).map_err(|e| ViewError::Eval {
                resource: format!("{}/{id}", view.resource),
                message: format!("stored resource does not parse: {e}"),
            })?;
            for row in rows(view, &resource)? {
                emit(&row)?;
            }
        }
        if page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
            return Ok(());
        }
    }
}
