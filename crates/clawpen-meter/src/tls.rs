//! TLS for outbound calls (model providers, the Telegram Bot API): rustls with aws-lc-rs as the
//! one crypto provider, trusting the system's roots (plus a configured CA for a private
//! gateway).

/// Installs aws-lc-rs as the process's rustls crypto provider. Idempotent; the binary calls it
/// at start, and everything that builds an HTTPS client calls it first as well, so a library
/// user or a test cannot build a client without it.
pub fn install_provider() {
    // Err only when a provider is installed already, which is what was asked for.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
