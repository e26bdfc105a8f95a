#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`dir`]: [`SandboxDir`], a handle on a directory the sandbox can write to, and every
//!   operation the server makes beneath it.
//! - [`socket`]: binding a listener into a sandbox's dir, and connecting to the sandbox's own
//!   listener with its peer verified.
//! - [`volume`]: the sandbox's bounded filesystem (an ext4 image, loop-mounted).

pub mod dir;
pub mod socket;
pub mod volume;

pub use dir::{Entry, EntryKind, FileStat, ReadError, SandboxDir};
pub use socket::{connect, ConnectError, Peer};
