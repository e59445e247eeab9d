//! The snapsync demo server as a library, so `demo-client compare` can host it in-process.
//!
//! [`server::run`] is the whole server: a fixed-tick simulation ([`scene`], [`game`])
//! replicated to every client through `snapsync::replication` over one of three
//! [`cli::Transport`]s. What the demo's clients share with it, and nothing of the server's
//! internals: [`player`] (a player's side of the game and its measurements), [`scene`]'s
//! inputs and avatar step, [`protocol`] (the welcome's game data), [`metrics`] and [`cli`].
#![warn(missing_docs, unreachable_pub)]

pub mod cli;
#[cfg(feature = "agones")]
pub mod fleet;
mod freshness;
pub mod game;
pub mod metrics;
pub mod ops;
pub mod player;
pub mod protocol;
pub mod scene;
pub mod server;
pub mod simulate;
pub mod tokens;
