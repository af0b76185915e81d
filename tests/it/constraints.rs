//! The status enums and the database agree: each enum's values are exactly the values its
//! column's CHECK constraint admits, as PostgreSQL itself prints the constraint.

use sagad::breaker::{BreakerState, Dependency};
use sagad::engine::model::{SagaStatus, StepPhase, StepStatus};
use sagad::store::inventory::{ClaimKind, ClaimStatus};
use sagad::store::outbound::DeliveryStatus;
use sagad::store::stripe_inbox::InboxStatus;
use sqlx::PgPool;
use utoipa::OpenApi;

use crate::harness::fresh_database;

/// The values a CHECK constraint on `table` admits for `column`, read from
/// `pg_get_constraintdef`, e.g. `CHECK ((status = ANY (ARRAY['running'::text, …])))`.
async fn admitted(pool: &PgPool, table: &str, column: &str) -> Vec<String> {
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = $1::regclass AND contype = 'c'",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("constraints");
    let prefix = format!("CHECK (({column} = ANY (ARRAY[");
    let matching: Vec<&String> = defs.iter().filter(|d| d.starts_with(&prefix)).collect();
    assert_eq!(
        matching.len(),
        1,
        "one CHECK constraint lists the values of {table}.{column}; found {defs:?}"
    );
    let mut values: Vec<String> = matching[0]
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    values.sort();
    values
}

fn sorted(values: impl IntoIterator<Item = &'static str>) -> Vec<String> {
    let mut v: Vec<String> = values.into_iter().map(str::to_owned).collect();
    v.sort();
    v
}

#[tokio::test]
async fn each_status_enum_has_exactly_the_values_of_its_check_constraint() {
    let (pool, _) = fresh_database().await;
    let cases = [
        (
            "sagas",
            "status",
            sorted(SagaStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "saga_steps",
            "phase",
            sorted(StepPhase::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "saga_steps",
            "status",
            sorted(StepStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "stripe_events",
            "status",
            sorted(InboxStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "webhook_deliveries",
            "status",
            sorted(DeliveryStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "inventory_claims",
            "status",
            sorted(ClaimStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "inventory_claims",
            "kind",
            sorted(ClaimKind::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "dependency_breakers",
            "state",
            sorted(BreakerState::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "dependency_breakers",
            "dependency",
            sorted(Dependency::ALL.iter().map(|s| s.as_str())),
        ),
    ];
    for (table, column, ours) in cases {
        assert_eq!(
            admitted(&pool, table, column).await,
            ours,
            "{table}.{column}: the enum and the CHECK constraint differ"
        );
    }
}

#[tokio::test]
async fn a_status_outside_the_enum_is_a_decode_error_not_a_default() {
    let (pool, _) = fresh_database().await;
    let err = sqlx::query_scalar::<_, SagaStatus>("SELECT 'paused'::text")
        .fetch_one(&pool)
        .await
        .expect_err("'paused' is no saga status");
    assert!(err.to_string().contains("not a SagaStatus"), "{err}");
    let ok: SagaStatus = sqlx::query_scalar("SELECT 'stuck'::text")
        .fetch_one(&pool)
        .await
        .expect("decode");
    assert_eq!(ok, SagaStatus::Stuck);
}

#[test]
fn the_openapi_document_lists_each_status_as_stored() {
    let doc = serde_json::to_value(sagad::http::ApiDoc::openapi()).expect("document serializes");
    let cases = [
        (
            "SagaStatus",
            sorted(SagaStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "StepPhase",
            sorted(StepPhase::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "StepStatus",
            sorted(StepStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "DeliveryStatus",
            sorted(DeliveryStatus::ALL.iter().map(|s| s.as_str())),
        ),
        (
            "ClaimStatus",
            sorted(ClaimStatus::ALL.iter().map(|s| s.as_str())),
        ),
    ];
    for (schema, ours) in cases {
        let mut documented: Vec<String> = doc["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} is documented as an enum"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        documented.sort();
        assert_eq!(documented, ours, "{schema}");
    }
}
