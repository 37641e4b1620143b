//! Placeholder until the optimizer lands.
