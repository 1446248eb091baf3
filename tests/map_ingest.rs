//! The Bundle `map` makes is what the gateway takes: the NL-01 example export, mapped by the
//! binary, is accepted as one transaction by a real server validating against the study
//! profiles, and sending it again creates nothing (every entry answers 200, no new
//! versions). On SQLite and, when configured, PostgreSQL.

use imagio_gateway::serve::ValidationMode;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;

#[macro_use]
mod common;
use common::*;

/// The example Bundle, made by the binary.
fn mapped_bundle() -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/nl01-retrospective");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagio-gateway"))
        .arg("map")
        .arg("--mapping")
        .arg(dir.join("mapping.toml"))
        .arg(dir.join("fixtures/basic/registry-export.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The study and site the mapped resources refer to, from the profiles' examples.
fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles/examples/valid")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

mod scenarios {
    use super::*;

    pub async fn mapped_export_loads_once(server: &Server) {
        for (file, url) in [
            ("study.json", "/fhir/ResearchStudy/a-imagio"),
            ("site.json", "/fhir/Organization/site-nl-01"),
        ] {
            let (s, _, b) = server.put(url, &example(file), &[]).await;
            assert!(s.is_success(), "{url}: {s} {b}");
        }
        let bundle = mapped_bundle();
        let entries = bundle["entry"].as_array().unwrap().len();
        let (s, _, first) = server.post("/fhir", &bundle, &[]).await;
        assert_eq!(s, StatusCode::OK, "{first}");
        let statuses = |b: &Value| -> Vec<String> {
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["response"]["status"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let created = statuses(&first);
        assert_eq!(created.len(), entries);
        assert!(created.iter().all(|s| s.starts_with("201")), "{created:?}");
        let procedures = server.version_count("Procedure").await;
        assert_eq!(procedures, 6);

        // The same export again: every resource is found unchanged.
        let (s, _, second) = server.post("/fhir", &bundle, &[]).await;
        assert_eq!(s, StatusCode::OK, "{second}");
        assert!(
            statuses(&second).iter().all(|s| s.starts_with("200")),
            "{second}"
        );
        assert_eq!(server.version_count("Procedure").await, procedures);
        let (s, _, p) = server.get("/fhir/Procedure/nl01-0002-abl-l1").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(p["meta"]["versionId"], "1");
        assert_eq!(p["code"]["coding"][0]["code"], "mwa");
    }
}

on_both!(
    mapped_export_loads_once,
    ValidationMode::Study,
    64 * 1024 * 1024
);
