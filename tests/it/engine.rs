//! Engine behaviour: leases, multiple instances, cancellation, waits, definition versions.
