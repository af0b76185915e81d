//! Saga definitions as data.

pub mod duration;
