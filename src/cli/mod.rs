//! The subcommands, one file each; `main.rs` parses the command line and dispatches.

pub mod audit;
pub mod policy;
pub mod run;
pub mod token;
