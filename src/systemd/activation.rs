//! The listening socket: from systemd (`LISTEN_FDS`) in production, bound ourselves for development.

use anyhow::Context;
use std::net::{SocketAddr, TcpListener};

/// The socket systemd passed us, or, without one, a socket bound to `fallback` (`--listen`).
///
/// `unit` names the socket unit in the error a person sees when neither is there.
pub fn listener(fallback: Option<SocketAddr>, unit: &str) -> anyhow::Result<TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        anyhow::bail!(
            "systemd passed {} sockets; {unit} must have exactly one ListenStream=",
            fds.len()
        );
    }
    if let Some(listener) = fds.take_tcp_listener(0).with_context(|| {
        format!(
            "the socket passed by systemd is not a TCP stream socket: check ListenStream= in {unit}"
        )
    })? {
        return Ok(listener);
    }
    match fallback {
        Some(addr) => TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}")),
        None => anyhow::bail!(
            "no socket from systemd (LISTEN_FDS is not set): start it with `systemctl start {unit}`, \
             or pass --listen 127.0.0.1:PORT to run it by hand"
        ),
    }
}
