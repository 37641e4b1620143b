//! Neural-network building blocks.
