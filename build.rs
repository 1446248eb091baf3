//! Build script: lists the study definitions under `profiles/` (every `*.json` except the
//! `examples/` and `views/` folders) so that `src/profiles/mod.rs` embeds them with
//! `include_str!`, and the SQL on FHIR ViewDefinitions of `profiles/views/` for
//! `src/views/`. A file added to or removed from `profiles/` is picked up on the next build
//! without editing code.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    println!("cargo:rerun-if-changed=profiles");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from(
        "/// The embedded study definitions: (path under `profiles/`, file contents), sorted by path.\n\
         pub static EMBEDDED: &[(&str, &str)] = &[\n",
    );
    for rel in &files {
        let abs = root.join(rel);
        let _ = writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("embedded_profiles.rs");
    std::fs::write(&dest, out).expect("write the embedded profile list");

    let views_dir = root.join("views");
    let mut views: Vec<String> = std::fs::read_dir(&views_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    views.sort();
    let mut out = String::from(
        "/// The shipped ViewDefinitions: (file name under `profiles/views/`, contents).\n\
         pub static EMBEDDED_VIEWS: &[(&str, &str)] = &[\n",
    );
    for name in &views {
        let abs = views_dir.join(name);
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("embedded_views.rs");
    std::fs::write(&dest, out).expect("write the embedded view list");
}

/// Adds the `*.json` files below `dir` (paths relative to `root`, `/`-separated), skipping
/// the top-level `examples/` and `views/` folders.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.is_dir() {
            if rel.len() == 1 && (rel[0] == "examples" || rel[0] == "views") {
                continue;
            }
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(rel.join("/"));
        }
    }
}
