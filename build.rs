//! Build script: lists the study definitions under `profiles/` (every `*.json` except the
//! `examples/` folder) so that `src/profiles/mod.rs` embeds them with `include_str!`. A file
//! added to or removed from `profiles/` is picked up on the next build without editing code.

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
}

/// Adds the `*.json` files below `dir` (paths relative to `root`, `/`-separated), skipping
/// the top-level `examples/` folder.
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
            if rel.len() == 1 && rel[0] == "examples" {
                continue;
            }
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(rel.join("/"));
        }
    }
}
