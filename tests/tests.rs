//! Hearth's integration tests: one test binary, one module per area.

mod cli;
mod store;
