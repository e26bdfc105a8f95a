//! Channels: doors to a tenant's agents other than the API. Each one turns what its platform
//! sends into a message for [`crate::App::deliver_message`] and sends the reply back.
//!
//! # Layout
//! - [`telegram`]: the Telegram channel (tenants' own bots and the shared bot with pairing).

pub mod telegram;
