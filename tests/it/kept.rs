//! `store::kept`: connections handed from one statement to the next without sqlx's check, and
//! every other connection left to sqlx.

use std::time::Duration;

use sagad::store::kept::{KEEP, Kept};

use crate::harness::fresh_database;

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("backend pid")
}

#[tokio::test]
async fn a_completed_statement_hands_its_connection_to_the_next() {
    let (pool, _) = fresh_database().await;
    let kept = Kept::new(pool);
    let mut conn = kept.acquire().await.unwrap();
    let first = backend_pid(&mut conn).await;
    assert!(kept.is_empty(), "a connection in use is not kept");
    conn.completed();
    assert_eq!(kept.len(), 1);

    let mut conn = kept.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut conn).await, first, "the kept connection");
    assert!(kept.is_empty());
    conn.completed();
}

#[tokio::test]
async fn a_connection_whose_statement_did_not_complete_is_not_kept() {
    let (pool, _) = fresh_database().await;
    let kept = Kept::new(pool);

    // Failed: the caller drops it.
    let mut conn = kept.acquire().await.unwrap();
    let failed = sqlx::query("SELECT 1/0").execute(&mut *conn).await;
    assert!(failed.is_err());
    drop(conn);
    assert!(kept.is_empty());

    // Cancelled mid-statement: dropped with the future, left to sqlx, which cleans it up.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), async {
        let mut conn = kept.acquire().await.unwrap();
        sqlx::query("SELECT pg_sleep(2)")
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.completed();
    })
    .await;
    assert!(cancelled.is_err(), "the statement was cut short");
    assert!(kept.is_empty());

    // Whatever sqlx hands out next answers its own statement.
    let mut conn = kept.acquire().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.completed();
    assert_eq!(kept.len(), 1);
}

#[tokio::test]
async fn connections_go_back_to_the_pool_after_a_while_and_at_shutdown() {
    let (pool, _) = fresh_database().await;
    let kept = Kept::new(pool.clone());
    let a = kept.acquire().await.unwrap();
    let b = kept.acquire().await.unwrap();
    a.completed();
    b.completed();
    assert_eq!(kept.len(), 2);
    kept.expire();
    assert_eq!(kept.len(), 2, "still fresh");
    tokio::time::sleep(KEEP + Duration::from_millis(50)).await;
    kept.expire();
    assert!(kept.is_empty(), "kept longer than {KEEP:?}");

    kept.acquire().await.unwrap().completed();
    assert_eq!(kept.len(), 1);
    kept.close();
    assert!(kept.is_empty());
    kept.acquire().await.unwrap().completed();
    assert!(kept.is_empty(), "nothing is kept once closed");
    // Every connection is back in sqlx's pool: closing it does not wait.
    tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .expect("the pool closes");
}

#[tokio::test]
async fn at_most_half_the_pool_is_kept() {
    let (pool, _) = fresh_database().await;
    let max = pool.options().get_max_connections() as usize;
    let kept = Kept::new(pool);
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(kept.acquire().await.unwrap());
    }
    for conn in held {
        conn.completed();
    }
    assert_eq!(kept.len(), max / 2);
}
