//! The Tower layer (placeholder; being written).
