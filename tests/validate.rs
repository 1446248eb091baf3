//! The validator, check by check: each with an instance that passes and one that fails, and
//! the failing one's issue located (FHIRPath location and line) as a site would see it.

use imagio_gateway::definitions::Registry;
use imagio_gateway::validate::{has_errors, Issue, Severity, Validator};
use serde_json::{json, Value};

/// A profile on Observation with slicing, required bindings, fixed/pattern values, an
/// invariant of its own and an extension with a context.
fn test_profiles() -> Vec<Value> {
    vec![
        json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/sd/lesion-size",
            "name": "LesionSize", "status": "draft", "kind": "resource", "abstract": false,
            "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Observation", "path": "Observation",
                 "constraint": [{"key": "size-1", "severity": "error", "human": "size must be positive",
                                 "expression": "value.ofType(Quantity).value > 0"}]},
                {"id": "Observation.status", "path": "Observation.status", "fixedCode": "final"},
                {"id": "Observation.category", "path": "Observation.category", "min": 1,
                 "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"}},
                {"id": "Observation.category:imaging", "path": "Observation.category", "sliceName": "imaging",
                 "min": 1, "max": "1",
                 "patternCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}},
                {"id": "Observation.code", "path": "Observation.code",
                 "patternCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "21889-1"}]}},
                {"id": "Observation.subject", "path": "Observation.subject", "min": 1,
                 "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}]},
                {"id": "Observation.value[x]", "path": "Observation.value[x]", "min": 1, "type": [{"code": "Quantity"}]},
                {"id": "Observation.value[x].code", "path": "Observation.value[x].code", "min": 1,
                 "binding": {"strength": "required", "valueSet": "http://example.org/vs/length-units"}},
                {"id": "Observation.component", "path": "Observation.component",
                 "slicing": {"discriminator": [{"type": "value", "path": "code.coding.code"}], "rules": "closed", "ordered": true}},
                {"id": "Observation.component:a", "path": "Observation.component", "sliceName": "a", "max": "1"},
                {"id": "Observation.component:a.code.coding.code", "path": "Observation.component.code.coding.code", "fixedCode": "a"},
                {"id": "Observation.component:b", "path": "Observation.component", "sliceName": "b", "max": "1"},
                {"id": "Observation.component:b.code.coding.code", "path": "Observation.component.code.coding.code", "fixedCode": "b"},
                {"id": "Observation.note", "path": "Observation.note", "max": "0"}
            ]}
        }),
        json!({
            "resourceType": "ValueSet", "url": "http://example.org/vs/length-units", "status": "active",
            "compose": {"include": [{"system": "http://unitsofmeasure.org", "concept": [{"code": "mm"}, {"code": "cm"}]}]}
        }),
        json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/ext/power",
            "name": "Power", "status": "draft", "kind": "complex-type", "abstract": false,
            "context": [{"type": "element", "expression": "Procedure"}],
            "type": "Extension",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": "http://example.org/ext/power"},
                {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "Quantity"}]}
            ]}
        }),
    ]
}

fn validator() -> Validator {
    let mut registry = Registry::core();
    for p in test_profiles() {
        registry.add(p).expect("test profile loads");
    }
    Validator::new(registry)
}

fn run(v: &Validator, resource: &Value, profile: Option<&str>) -> Vec<Issue> {
    let text = serde_json::to_string_pretty(resource).expect("JSON");
    let profiles: Vec<String> = profile.into_iter().map(str::to_string).collect();
    v.validate_json(&text, &profiles)
}

fn errors(issues: &[Issue]) -> Vec<String> {
    issues
        .iter()
        .filter(|i| i.severity.is_error())
        .map(|i| format!("{}: {}", i.location, i.message))
        .collect()
}

/// Asserts exactly one error, at `location`, whose message contains `fragment`.
fn one_error(issues: &[Issue], location: &str, fragment: &str) {
    let errs = errors(issues);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = issues
        .iter()
        .find(|i| i.severity.is_error())
        .expect("an error");
    assert_eq!(e.location, location, "{errs:?}");
    assert!(
        e.message.contains(fragment),
        "{:?} lacks {fragment:?}",
        e.message
    );
    assert!(
        e.line.is_some() && e.column.is_some(),
        "errors carry line:column"
    );
}

fn lesion_size() -> Value {
    json!({
        "resourceType": "Observation",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Lesion 1: 23 mm</div>"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "21889-1", "display": "Size Tumor"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 23, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"},
        "component": [
            {"code": {"coding": [{"system": "http://example.org", "code": "a"}]}, "valueString": "x"},
            {"code": {"coding": [{"system": "http://example.org", "code": "b"}]}, "valueString": "y"}
        ]
    })
}

const PROFILE: Option<&str> = Some("http://example.org/sd/lesion-size");

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = base.pointer_mut(parent).expect("parent exists");
    match target {
        Value::Object(m) => {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.to_string(), value);
            }
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("index");
            if value.is_null() {
                a.remove(i);
            } else {
                a[i] = value;
            }
        }
        _ => panic!("not a container"),
    }
    base
}

#[test]
fn a_conforming_instance_has_no_error() {
    let issues = run(&validator(), &lesion_size(), PROFILE);
    assert!(!has_errors(&issues), "{:#?}", errors(&issues));
}

#[test]
fn structure_unknown_element_and_wrong_json_type() {
    let v = validator();
    one_error(
        &run(&v, &with(lesion_size(), "/colour", json!("red")), None),
        "Observation",
        "unknown element 'colour'",
    );
    one_error(
        &run(&v, &with(lesion_size(), "/status", json!(1)), None),
        "Observation.status",
        "must be a JSON string",
    );
}

#[test]
fn primitive_formats() {
    let v = validator();
    let ok = with(
        lesion_size(),
        "/effectiveDateTime",
        json!("2024-03-01T10:00:00+01:00"),
    );
    assert!(!has_errors(&run(&v, &ok, None)));
    for (value, fragment) in [
        ("2024-13-01", "not a valid dateTime"),
        ("2024-03-01T10:00", "not a valid dateTime"),
    ] {
        one_error(
            &run(
                &v,
                &with(lesion_size(), "/effectiveDateTime", json!(value)),
                None,
            ),
            "Observation.effective.ofType(dateTime)",
            fragment,
        );
    }
    one_error(
        &run(&v, &with(lesion_size(), "/id", json!("a_b")), None),
        "Observation.id",
        "not a valid id",
    );
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/issued", json!("2024-03-01")),
            None,
        ),
        "Observation.issued",
        "not a valid instant",
    );
}

#[test]
fn choice_types_restricted_by_the_profile() {
    let v = validator();
    let string_value = with(
        with(lesion_size(), "/valueQuantity", Value::Null),
        "/valueString",
        json!("23 mm"),
    );
    assert!(
        !has_errors(&run(&v, &string_value, None)),
        "the base allows valueString"
    );
    let issues = run(&v, &string_value, PROFILE);
    assert!(
        errors(&issues)
            .iter()
            .any(|e| e.contains("type string is not allowed")),
        "{:#?}",
        errors(&issues)
    );
}

#[test]
fn cardinality_min_max_and_forbidden() {
    let v = validator();
    one_error(
        &run(&v, &with(lesion_size(), "/subject", Value::Null), PROFILE),
        "Observation.subject",
        "minimum required = 1, but only found 0",
    );
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/note", json!([{"text": "Mr Jansen"}])),
            PROFILE,
        ),
        "Observation.note",
        "not allowed (max = 0)",
    );
}

#[test]
fn fixed_and_pattern_values() {
    let v = validator();
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/status", json!("amended")),
            PROFILE,
        ),
        "Observation.status",
        "value must be exactly",
    );
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/code/coding/0/code", json!("33728-7")),
            PROFILE,
        ),
        "Observation.code",
        "does not match the required pattern",
    );
}

#[test]
fn bindings_required_extensible_and_unverifiable() {
    let v = validator();
    // Required (profile): a unit outside the ValueSet is an error.
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/valueQuantity/code", json!("[in_i]")),
            PROFILE,
        ),
        "Observation.value.ofType(Quantity).code",
        "not in the required value set http://example.org/vs/length-units",
    );
    // Required (base): Observation.status.
    one_error(
        &run(&v, &with(lesion_size(), "/status", json!("done")), None),
        "Observation.status",
        "not in the required value set",
    );
    // Extensible (base): Observation.interpretation outside its value set is a warning.
    let interp = with(
        lesion_size(),
        "/interpretation",
        json!([{"coding": [{"system": "http://example.org/local", "code": "big"}]}]),
    );
    let issues = run(&v, &interp, None);
    assert!(!has_errors(&issues), "{:#?}", errors(&issues));
    assert!(
        issues
            .iter()
            .any(|i| i.severity == Severity::Warning
                && i.location == "Observation.interpretation[0]"),
        "{issues:#?}"
    );
    // Preferred (category) and example (code) bindings: nothing, whatever the code.
    let other = with(
        lesion_size(),
        "/category/0/coding/0/code",
        json!("histology"),
    );
    let other = with(other, "/code/coding/0/code", json!("x-local"));
    let issues = run(&v, &other, None);
    assert!(
        issues
            .iter()
            .all(|i| i.location != "Observation.code"
                && !i.location.starts_with("Observation.category")),
        "{issues:#?}"
    );
    // A CodeableConcept with text only cannot meet a required binding.
    let condition = json!({"resourceType": "Condition",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">CRLM</div>"},
        "clinicalStatus": {"text": "active"}, "subject": {"reference": "Patient/p1"}});
    one_error(
        &run(&v, &condition, None),
        "Condition.clinicalStatus",
        "no code provided",
    );
    // A code from a system the gateway does not hold (SNOMED CT) is reported as unverifiable.
    let sct = with(
        lesion_size(),
        "/bodySite",
        json!({"coding": [{"system": "http://snomed.info/sct", "code": "10200004"}]}),
    );
    let issues = run(&v, &sct, None);
    assert!(!has_errors(&issues));
}

#[test]
fn invariants_base_and_profile() {
    let v = validator();
    // The profile's own invariant.
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/valueQuantity/value", json!(-3)),
            PROFILE,
        ),
        "Observation",
        "size must be positive (size-1)",
    );
    // A base invariant (obs-6: dataAbsentReason only when there is no value).
    one_error(
        &run(
            &v,
            &with(
                lesion_size(),
                "/dataAbsentReason",
                json!({"text": "not measured"}),
            ),
            None,
        ),
        "Observation",
        "(obs-6)",
    );
    // A data type invariant (per-1) deep in the resource.
    one_error(
        &run(
            &v,
            &with(
                lesion_size(),
                "/effectivePeriod",
                json!({"start": "2024-03-02", "end": "2024-03-01"}),
            ),
            None,
        ),
        "Observation.effective.ofType(Period)",
        "(per-1)",
    );
    // A warning-level invariant stays a warning (dom-6: narrative).
    let issues = run(&v, &with(lesion_size(), "/text", Value::Null), None);
    assert!(!has_errors(&issues));
    assert!(issues
        .iter()
        .any(|i| i.severity == Severity::Warning && i.rule.as_deref() == Some("dom-6")));
}

#[test]
fn extensions_known_unknown_context_and_value_type() {
    let v = validator();
    let procedure = |ext: Value| {
        json!({"resourceType": "Procedure",
               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">RFA</div>"},
               "status": "completed", "subject": {"reference": "Patient/p1"},
               "extension": [ext]})
    };
    let power =
        json!({"url": "http://example.org/ext/power", "valueQuantity": {"value": 60, "unit": "W"}});
    assert!(!has_errors(&run(&v, &procedure(power.clone()), None)));
    one_error(
        &run(
            &v,
            &procedure(json!({"url": "http://example.org/ext/power", "valueString": "60 W"})),
            None,
        ),
        "Procedure.extension[0].value.ofType(string)",
        "type string is not allowed",
    );
    // Context: the power extension is for Procedure, not Observation.
    let obs = with(lesion_size(), "/extension", json!([power]));
    one_error(
        &run(&v, &obs, None),
        "Observation.extension[0]",
        "is not allowed on Observation",
    );
    // Unknown: a warning by default, an error when configured.
    let unknown = procedure(json!({"url": "http://example.org/ext/unknown", "valueString": "x"}));
    let issues = run(&v, &unknown, None);
    assert!(!has_errors(&issues));
    assert!(issues
        .iter()
        .any(|i| i.message.contains("unknown extension")));
    let mut strict = validator();
    strict.options.unknown_extension = Severity::Error;
    one_error(
        &run(&strict, &unknown, None),
        "Procedure.extension[0]",
        "unknown extension",
    );
    // ext-1: an extension has a value or extensions, not both.
    one_error(
        &run(
            &v,
            &procedure(
                json!({"url": "http://example.org/ext/other", "valueString": "x",
                                   "extension": [{"url": "a", "valueString": "y"}]}),
            ),
            None,
        ),
        "Procedure.extension[0]",
        "(ext-1)",
    );
}

#[test]
fn slicing_pattern_value_closed_ordered() {
    let v = validator();
    // Required slice missing (pattern discriminator).
    one_error(
        &run(
            &v,
            &with(
                lesion_size(),
                "/category/0/coding/0/code",
                json!("laboratory"),
            ),
            PROFILE,
        ),
        "Observation.category",
        "slice 'imaging' of Observation.category: minimum required = 1",
    );
    // Closed slicing: a component that matches no slice.
    let extra = with(
        lesion_size(),
        "/component/1",
        json!({"code": {"coding": [{"system": "http://example.org", "code": "c"}]}, "valueString": "z"}),
    );
    one_error(
        &run(&v, &extra, PROFILE),
        "Observation.component[1]",
        "matches none of the slices and the slicing is closed",
    );
    // Ordered: b before a.
    let mut swapped = lesion_size();
    if let Some(c) = swapped
        .pointer_mut("/component")
        .and_then(Value::as_array_mut)
    {
        c.swap(0, 1);
    }
    one_error(
        &run(&v, &swapped, PROFILE),
        "Observation.component[1]",
        "out of order",
    );
    // A slice's max.
    let twice = with(
        lesion_size(),
        "/component/1",
        json!({"code": {"coding": [{"system": "http://example.org", "code": "a"}]}, "valueString": "z"}),
    );
    one_error(
        &run(&v, &twice, PROFILE),
        "Observation.component",
        "slice 'a' of Observation.component: maximum allowed = 1",
    );
}

#[test]
fn references_target_types_and_bundle_resolution() {
    let v = validator();
    one_error(
        &run(
            &v,
            &with(lesion_size(), "/subject/reference", json!("Device/d1")),
            PROFILE,
        ),
        "Observation.subject",
        "reference to Device is not allowed here",
    );
    let bundle = |reference: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:8f0b2f1c-3d2e-4f6a-9b1c-0a1b2c3d4e5f",
             "resource": {"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">p</div>"}},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:9f0b2f1c-3d2e-4f6a-9b1c-0a1b2c3d4e5f",
             "resource": with(lesion_size(), "/subject/reference", json!(reference)),
             "request": {"method": "POST", "url": "Observation"}}]})
    };
    let ok = run(
        &v,
        &bundle("urn:uuid:8f0b2f1c-3d2e-4f6a-9b1c-0a1b2c3d4e5f"),
        None,
    );
    assert!(!has_errors(&ok), "{:#?}", errors(&ok));
    let issues = run(
        &v,
        &bundle("urn:uuid:0000000c-3d2e-4f6a-9b1c-0a1b2c3d4e5f"),
        None,
    );
    assert!(
        issues
            .iter()
            .any(|i| i.location == "Bundle.entry[1].resource.subject"
                && i.message.contains("does not resolve")),
        "{issues:#?}"
    );
}

#[test]
fn bundle_entries_checked_against_their_claimed_profile() {
    let v = validator();
    let claimed = with(
        lesion_size(),
        "/meta",
        json!({"profile": ["http://example.org/sd/lesion-size"]}),
    );
    let entry = |r: Value| json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "http://example.org/fhir/Observation/o1", "resource": with(r, "/id", json!("o1"))}]});
    assert!(!has_errors(&run(&v, &entry(claimed.clone()), None)));
    one_error(
        &run(
            &v,
            &entry(with(claimed.clone(), "/status", json!("amended"))),
            None,
        ),
        "Bundle.entry[0].resource.status",
        "value must be exactly",
    );
    // An unknown claimed profile is an error, never a silent pass.
    let unknown = with(
        lesion_size(),
        "/meta",
        json!({"profile": ["http://example.org/sd/nowhere"]}),
    );
    one_error(&run(&v, &unknown, None), "Observation", "cannot be checked");
    // fullUrl and id must agree.
    let mismatch = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "http://example.org/fhir/Observation/o2", "resource": with(lesion_size(), "/id", json!("o1"))}]});
    one_error(
        &run(&v, &mismatch, None),
        "Bundle.entry[0].fullUrl",
        "does not match the resource Observation/o1",
    );
}

#[test]
fn contained_resources_are_validated() {
    let v = validator();
    let with_contained = with(
        lesion_size(),
        "/contained",
        json!([{"resourceType": "Patient", "id": "p", "gender": "unknown-gender"}]),
    );
    let with_contained = with(with_contained, "/subject/reference", json!("#p"));
    one_error(
        &run(&v, &with_contained, None),
        "Observation.contained[0].gender",
        "not in the required value set",
    );
}

#[test]
fn operation_outcome_carries_locations() {
    let v = validator();
    let issues = run(&v, &with(lesion_size(), "/status", json!("done")), None);
    let oo: Value =
        serde_json::from_str(&imagio_gateway::validate::operation_outcome(&issues)).expect("JSON");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let first = &oo["issue"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["code"], "code-invalid");
    assert_eq!(first["expression"][0], "Observation.status");
    assert!(first["extension"].as_array().is_some_and(|e| e
        .iter()
        .any(|x| x["url"].as_str().is_some_and(|u| u.ends_with("issue-line")))));
    // The outcome itself is a valid OperationOutcome.
    assert!(!has_errors(&v.validate_json(&oo.to_string(), &[])));
}

/// A profile whose slices are told apart by type, by existence and by profile, with
/// `openAtEnd` rules.
fn discriminator_profiles() -> Vec<Value> {
    vec![
        json!({
            "resourceType": "StructureDefinition", "url": "http://example.org/sd/slices",
            "name": "Slices", "status": "draft", "kind": "resource", "abstract": false, "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Observation.component", "path": "Observation.component",
                 "slicing": {"discriminator": [{"type": "type", "path": "value"}], "rules": "openAtEnd"}},
                {"id": "Observation.component:measured", "path": "Observation.component", "sliceName": "measured", "min": 1, "max": "1"},
                {"id": "Observation.component:measured.value[x]", "path": "Observation.component.value[x]", "type": [{"code": "Quantity"}]},
                {"id": "Observation.identifier", "path": "Observation.identifier",
                 "slicing": {"discriminator": [{"type": "exists", "path": "system"}], "rules": "closed"}},
                {"id": "Observation.identifier:withSystem", "path": "Observation.identifier", "sliceName": "withSystem", "min": 1},
                {"id": "Observation.identifier:withSystem.system", "path": "Observation.identifier.system", "min": 1},
                {"id": "Observation.extension", "path": "Observation.extension",
                 "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
                {"id": "Observation.extension:power", "path": "Observation.extension", "sliceName": "power", "min": 1,
                 "type": [{"code": "Extension", "profile": ["http://example.org/ext/power-any"]}]}
            ]}
        }),
        json!({
            "resourceType": "StructureDefinition", "url": "http://example.org/ext/power-any",
            "name": "PowerAny", "status": "draft", "kind": "complex-type", "abstract": false,
            "context": [{"type": "element", "expression": "Element"}], "type": "Extension",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": "http://example.org/ext/power-any"},
                {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": "Quantity"}]}
            ]}
        }),
    ]
}

#[test]
fn slicing_by_type_exists_and_url_with_open_at_end() {
    let mut registry = Registry::core();
    for p in discriminator_profiles() {
        registry.add(p).expect("loads");
    }
    let v = Validator::new(registry);
    let base = json!({
        "resourceType": "Observation",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "status": "final", "code": {"text": "x"},
        "extension": [{"url": "http://example.org/ext/power-any", "valueQuantity": {"value": 60, "unit": "W"}}],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}],
        "component": [
            {"code": {"text": "size"}, "valueQuantity": {"value": 2}},
            {"code": {"text": "note"}, "valueString": "other"}
        ]
    });
    let profile = Some("http://example.org/sd/slices");
    let ok = run(&v, &base, profile);
    assert!(!has_errors(&ok), "{:#?}", errors(&ok));
    // Type discriminator: no Quantity component, so the required slice is missing.
    let no_quantity = with(
        base.clone(),
        "/component/0",
        json!({"code": {"text": "size"}, "valueString": "2 cm"}),
    );
    one_error(
        &run(&v, &no_quantity, profile),
        "Observation.component",
        "slice 'measured' of Observation.component: minimum required = 1",
    );
    // openAtEnd: a value matching no slice before one that does.
    let mut reordered = base.clone();
    if let Some(c) = reordered
        .pointer_mut("/component")
        .and_then(Value::as_array_mut)
    {
        c.swap(0, 1);
    }
    one_error(
        &run(&v, &reordered, profile),
        "Observation.component[1]",
        "must come last (openAtEnd)",
    );
    // Exists discriminator with closed rules: an identifier without a system matches no slice.
    let no_system = with(base.clone(), "/identifier/0", json!({"value": "42"}));
    let issues = run(&v, &no_system, profile);
    assert!(
        errors(&issues)
            .iter()
            .any(|e| e.contains("matches none of the slices and the slicing is closed")),
        "{:#?}",
        errors(&issues)
    );
    // Extension slice by url, checked against the slice's extension profile.
    let wrong_type = with(
        base.clone(),
        "/extension/0",
        json!({"url": "http://example.org/ext/power-any", "valueString": "60 W"}),
    );
    let issues = run(&v, &wrong_type, profile);
    assert!(
        errors(&issues)
            .iter()
            .any(|e| e.starts_with("Observation.extension[0].value.ofType(string)")),
        "{:#?}",
        errors(&issues)
    );
}
