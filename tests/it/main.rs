//! The one integration-test binary: real PostgreSQL, real HTTP servers on 127.0.0.1:0.
// Tests make their fixtures with the wall clock; sagad itself reads time through `sagad::clock`.
#![allow(clippy::disallowed_methods)]

mod harness;

mod api;
mod as_of;
mod blocks;
mod booking;
mod booking_change;
mod bookings;
mod cancellation;
mod ceiling;
mod change_crash;
mod cli;
mod clock;
mod console;
mod constraints;
mod crash;
mod dependency_events;
mod embedded_pg;
mod engine;
mod feed;
mod hostile;
mod inbound_stripe;
mod kept;
mod limits;
mod metrics;
mod openapi;
mod operator;
mod ordering;
mod outage;
mod outbound;
mod projections;
mod queues;
mod relay;
mod start;
mod stripe;
mod upgrade;
