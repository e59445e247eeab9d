//! The snapsync demo server as a library, so `demo-client compare` can host it in-process.
//!
//! [`server::run`] is the whole server: a fixed-tick simulation ([`scene`]) replicated to
//! every client over one of three [`cli::Transport`]s.
#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod game;
pub mod metrics;
pub mod protocol;
pub mod scene;
pub mod server;
pub mod simulate;
pub mod transport;
