//! Saga definitions as data.
