//! redcap-gateway: an authenticating, policy-enforcing reverse proxy for REDCap's API.
//! See docs/ARCHITECTURE.md for the design; `stack.rs` for the request path.
//!
//! `fake_redcap` and `dev` are test fixtures (the `dev` feature, on by default): nothing on
//! the request path imports them (tests/structure.rs checks), and the shipped image is
//! built without them.

pub mod admin;
pub mod alloc;
pub mod audit;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod context;
pub mod desk;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
#[cfg(feature = "dev")]
pub mod fake_redcap;
pub mod gateway;
pub mod http_client;
pub mod layers;
pub mod linger;
pub mod metadata_cache;
pub mod policy;
pub mod portal;
pub mod ratelimit;
pub mod redcap;
pub mod reload;
pub mod secret;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod upstream;
pub mod vault;

pub use body::BoxError;
