//! The criterion settings of the CPU benches (`matmul`, `ops`, `optim`, `nf4`), included in each with
//! `#[path = "common/config.rs"] mod config;` so that they are tuned in one place.

use std::time::Duration;

use criterion::Criterion;

/// Ten samples after a one-second warm-up, three seconds of measurement.
pub(crate) fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
