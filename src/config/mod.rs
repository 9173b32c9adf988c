//! Configuration: `/etc/kechi/APP.toml`, overridden by `KECHI_*` variables and the
//! Server::Starter aliases, validated in two stages (shape, then meaning; every problem at once,
//! each with file, line and key), with the provenance of every effective value.

mod env;
mod error;
mod keys;
mod lines;
pub mod model;
mod raw;
mod shape;
mod validate;

pub use model::*;
