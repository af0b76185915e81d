//! The OpenAPI document: valid OpenAPI 3.1 (against the OpenAPI Initiative's meta-schemas,
//! checked in under `tests/openapi/`), with path parameters in their paths and query
//! parameters in the query, and every documented operation's refusals on record.

use serde_json::Value;
use utoipa::OpenApi;

fn meta_schema(file: &str) -> Value {
    let path = format!("{}/tests/openapi/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("meta-schema file"))
        .expect("meta-schema JSON")
}

fn document() -> Value {
    serde_json::to_value(sagad::http::ApiDoc::openapi()).expect("document serializes")
}

/// Every validation error of `doc` against OpenAPI 3.1 with the OAS schema dialect.
fn violations(doc: &Value) -> Vec<String> {
    let registry = jsonschema::Registry::new()
        .add(
            "https://spec.openapis.org/oas/3.1/schema/2022-10-07",
            meta_schema("schema.json"),
        )
        .and_then(|r| {
            r.add(
                "https://spec.openapis.org/oas/3.1/dialect/base",
                meta_schema("dialect-base.json"),
            )
        })
        .and_then(|r| {
            r.add(
                "https://spec.openapis.org/oas/3.1/meta/base",
                meta_schema("meta-base.json"),
            )
        })
        .and_then(|r| r.prepare())
        .expect("registry of meta-schemas");
    let validator = jsonschema::options()
        .with_registry(&registry)
        .build(&meta_schema("schema-base.json"))
        .expect("OpenAPI 3.1 meta-schema");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = document();
    let errors = violations(&doc);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // The meta-schema is not a rubber stamp.
    let mut broken = doc.clone();
    broken["paths"]["/v1/sagas"]["get"]["responses"] = Value::Null;
    assert!(!violations(&broken).is_empty());
}

/// Each operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

fn params(op: &Value, location: &str) -> Vec<String> {
    op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["in"] == location)
                .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn parameters_are_where_the_handlers_read_them() {
    let doc = document();
    for (path, method, op) in operations(&doc) {
        let mut in_template: Vec<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let mut in_path = params(&op, "path");
        in_template.sort();
        in_path.sort();
        assert_eq!(in_path, in_template, "{method} {path}: path parameters");
    }
    let query = |path: &str, method: &str| {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is documented");
        params(op, "query")
    };
    assert_eq!(
        query("/v1/sagas", "get"),
        ["status", "saga", "limit", "cursor"]
    );
    assert_eq!(query("/v1/sagas", "post"), ["wait"]);
    assert_eq!(
        query("/v1/webhook-endpoints/{id}/deliveries", "get"),
        ["status", "before", "limit"]
    );
}

#[test]
fn every_operation_documents_its_refusals_with_the_error_body() {
    let doc = document();
    let error_body = Value::String("#/components/schemas/ErrorBody".into());
    for (path, method, op) in operations(&doc) {
        if !path.starts_with("/v1/") {
            continue;
        }
        let mut expected = vec!["200|201|202|204", "401", "500"];
        if !params(&op, "path").is_empty() {
            expected.extend(["400", "404"]);
        }
        if !params(&op, "query").is_empty() {
            expected.push("400");
        }
        if op["requestBody"].is_object() {
            expected.extend(["400", "413", "422"]);
        }
        let responses = op["responses"].as_object().expect("responses");
        for status in expected {
            assert!(
                status.split('|').any(|s| responses.contains_key(s)),
                "{method} {path} does not document {status}"
            );
        }
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"], error_body,
                    "{method} {path} {status}"
                );
            }
        }
        assert_eq!(
            op["security"],
            serde_json::json!([{ "bearer": [] }]),
            "{method} {path}"
        );
    }
}

#[test]
fn request_schemas_are_as_strict_as_the_validation() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for name in ["CreateEndpoint", "UpdateEndpoint"] {
        let props = &schemas[name]["properties"];
        assert_eq!(props["url"]["format"], "uri", "{name}");
        assert_eq!(
            props["url"]["maxLength"],
            sagad::http::MAX_URL_LEN,
            "{name}"
        );
        assert_eq!(
            props["description"]["maxLength"],
            sagad::http::MAX_DESCRIPTION_LEN,
            "{name}"
        );
        assert_eq!(props["rate_limit"]["minimum"], 1, "{name}");
        let types = &props["event_types"];
        assert_eq!(types["minItems"], 1, "{name}");
        assert_eq!(types["maxItems"], sagad::http::MAX_EVENT_TYPES, "{name}");
        let patterns = types["items"]["enum"]
            .as_array()
            .expect("an enum of patterns");
        for p in patterns {
            let p = p.as_str().unwrap_or_default();
            assert!(
                sagad::outbound::catalog::validate_pattern(p).is_ok(),
                "{p} is offered but refused"
            );
        }
        for p in ["*", "booking.*", "payment.refunded", "endpoint.disabled"] {
            assert!(
                patterns.iter().any(|v| v == p),
                "{p} is accepted but not offered"
            );
        }
    }
    let input = &schemas["RawBookingInput"];
    let mut required: Vec<&str> = input["required"]
        .as_array()
        .expect("required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        [
            "amount",
            "check_in",
            "check_out",
            "currency",
            "guest_id",
            "listing_id",
            "payment_method"
        ]
    );
    let props = &input["properties"];
    assert_eq!(props["amount"]["type"], "integer");
    assert_eq!(props["amount"]["minimum"], 1);
    assert_eq!(props["check_in"]["format"], "date");
    assert_eq!(props["listing_id"]["maxLength"], 64);
    assert!(props["payment_method"]["pattern"].is_string());
    assert_eq!(
        schemas["StartSaga"]["properties"]["input"]["$ref"],
        "#/components/schemas/RawBookingInput"
    );
}

#[test]
fn every_reference_resolves() {
    fn walk(v: &Value, doc: &Value, missing: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.trim_start_matches('#');
                    if doc.pointer(pointer).is_none() {
                        missing.push(r.clone());
                    }
                }
                map.values().for_each(|v| walk(v, doc, missing));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, doc, missing)),
            _ => {}
        }
    }
    let doc = document();
    let mut missing = Vec::new();
    walk(&doc, &doc, &mut missing);
    assert!(missing.is_empty(), "{missing:?}");
}

#[test]
#[ignore = "prints the document"]
fn print_document() {
    println!("{}", serde_json::to_string_pretty(&document()).unwrap());
}
