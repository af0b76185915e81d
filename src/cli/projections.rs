//! `sagad projections rebuild | verify NAME`: projections folded again from the event store.
//! Reads the database directly (DATABASE_URL, or the embedded cluster `sagad serve` runs).

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::config::DbArgs;
use crate::db;
use crate::projections::{self, Progress, Projection};

#[derive(Subcommand, Debug)]
pub enum ProjectionsCommand {
    /// Rebuild a projection from the event store into a shadow table while sagad runs, catch up
    /// with what commits meanwhile, then swap it in under a short lock.
    Rebuild {
        /// The projection: bookings.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Fold the events again and list every row of the projection that differs; exit 1 if any.
    Verify {
        /// The projection: bookings.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// A progress bar on stderr: `[#####.....] 51% 120000/234000 events 84000 events/s`.
fn bar(p: Progress) {
    const WIDTH: usize = 30;
    let total = p.total.max(p.events).max(1);
    let filled = (p.events as f64 / total as f64 * WIDTH as f64) as usize;
    eprint!(
        "\r[{}{}] {:>3}% {}/{} events  {:.0} events/s ",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        p.events * 100 / total,
        p.events,
        total,
        p.per_second()
    );
    let _ = std::io::stderr().flush();
}

pub async fn run(command: ProjectionsCommand) -> anyhow::Result<ExitCode> {
    let (name, db) = match &command {
        ProjectionsCommand::Rebuild { name, db } | ProjectionsCommand::Verify { name, db } => {
            (name, db)
        }
    };
    let projection = match Projection::parse(name) {
        Ok(p) => p,
        Err(e) => bail!(e),
    };
    let database = db::attach(db).await?;
    let pool = database.pool.clone();
    let result = match command {
        ProjectionsCommand::Rebuild { .. } => {
            let r = projections::rebuild(&pool, projection, &mut bar).await;
            eprintln!();
            r.map(|r| {
                println!(
                    "rebuilt {}: {} events folded into {} rows in {:.1}s ({:.0} events/s); {} \
                     aggregates caught up; bookings locked {} ms for the swap",
                    projection.name(),
                    r.events,
                    r.rows,
                    r.elapsed.as_secs_f64(),
                    r.events as f64 / r.elapsed.as_secs_f64().max(1e-9),
                    r.caught_up,
                    r.swap.as_millis()
                );
                ExitCode::SUCCESS
            })
        }
        ProjectionsCommand::Verify { .. } => {
            let r = projections::verify(&pool, projection, &mut bar).await;
            eprintln!();
            r.map(|v| {
                for d in &v.drift {
                    for (column, table, events) in &d.columns {
                        println!("{} {column}: table {table}, events {events}", d.id);
                    }
                }
                if v.drift.is_empty() {
                    println!(
                        "{}: {} rows match the fold of {} events",
                        projection.name(),
                        v.rows,
                        v.events
                    );
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "{}: {} of {} rows differ from the fold of the events",
                        projection.name(),
                        v.drift.len(),
                        v.rows
                    );
                    ExitCode::FAILURE
                }
            })
        }
    };
    database.stop().await;
    Ok(result?)
}
