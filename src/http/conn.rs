//! The HTTP API's connections: accepted, capped, timed out.
//!
//! `axum::serve` keeps a connection as long as the client does: 1,000
//! silent clients held 1,000 descriptors for minutes after their TLS
//! handshake. Here every connection
//! - counts against a cap per client IP ([`PER_IP`]) and in all
//!   ([`MAX_CONNECTIONS`]); one over the cap is closed at once (logged at
//!   most once per [`crate::accept::LOG_EVERY`]), so one client cannot
//!   keep the others out;
//! - gets [`tls::HANDSHAKE_TIMEOUT`] for its TLS handshake, then
//!   [`HEADER_TIMEOUT`] to send each request's headers, counted from the
//!   moment the server waits for them: the same bound closes a connection
//!   that sends nothing after its handshake and one left idle between
//!   requests (hyper's header read timeout, which needs the timer
//!   `axum::serve` does not give it);
//! - ends with the server: at shutdown a request in flight may finish
//!   (up to [`DRAIN`]), then the connection closes.
//!
//! A connection a handler upgrades (the console's websocket,
//! `console_page::spice_bridge`) leaves hyper; its place is a [`Held`] in
//! every request's extensions, which the handler keeps as long as it
//! serves the upgraded stream, so it still counts against the caps.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::tls::{self, PeerAddr};

/// Longest wait for a request's headers, from the moment the server is
/// ready for the next request (so also the idle time between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at once from one client IP.
pub const PER_IP: usize = 64;
/// Connections at once in all.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a request in flight at shutdown may take to finish.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The open connections, per client IP.
#[derive(Debug, Default)]
struct Slots {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One open connection's place; given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection's place against the caps, in each of its requests'
/// extensions: a handler that takes the connection over (an upgrade)
/// keeps it while it serves it, and the place is given back when the
/// last holder drops it.
#[derive(Debug, Clone)]
pub struct Held(#[allow(dead_code)] Arc<Slot>);

/// A place for a connection from `ip`, or why not.
fn take_slot(slots: &Arc<Mutex<Slots>>, ip: IpAddr) -> Result<Slot, &'static str> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    if s.total >= MAX_CONNECTIONS {
        return Err("the server's connection limit");
    }
    let n = s.per_ip.entry(ip).or_default();
    if *n >= PER_IP {
        return Err("the per-client connection limit");
    }
    *n += 1;
    s.total += 1;
    Ok(Slot {
        slots: slots.clone(),
        ip,
    })
}

/// Accept on `tcp` (TLS first when `tls` is given) and serve `router` on
/// each connection until `shutdown` turns true.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut errors = crate::accept::AcceptErrors::default();
    let mut refused = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => break,
            r = tcp.accept() => match r {
                Ok(c) => {
                    errors.ok();
                    c
                }
                Err(e) => {
                    errors.failed("HTTP API", &e).await;
                    continue;
                }
            },
        };
        let slot = match take_slot(&slots, peer.ip()) {
            Ok(s) => s,
            Err(limit) => {
                drop(stream);
                refused += 1;
                let due = last_refusal_log.is_none_or(|t| t.elapsed() >= crate::accept::LOG_EVERY);
                if due {
                    last_refusal_log = Some(Instant::now());
                    warn!(%peer, limit, refused, "HTTP connection refused: over {limit}");
                    refused = 0;
                }
                continue;
            }
        };
        let (router, tls, stop) = (router.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let held = Held(Arc::new(slot));
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, peer, held, router, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(s, peer, held, router, stop).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    info!(addr = ?tcp.local_addr().ok(), "HTTP API stopped");
}

/// Serve HTTP/1.1 on one connection (upgrades included: see [`Held`]).
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    held: Held,
    router: Router,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        req.extensions_mut().insert(held.clone());
        let mut router = router.clone();
        tower_service::Service::call(&mut router, req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_ip_and_in_all_and_given_back() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held: Vec<Slot> = (0..PER_IP).map(|_| take_slot(&slots, a).unwrap()).collect();
        assert!(take_slot(&slots, a).is_err());
        held.pop();
        held.push(take_slot(&slots, a).unwrap());
        let mut others = Vec::new();
        for i in 0.. {
            let ip = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]);
            match take_slot(&slots, ip) {
                Ok(s) => others.push(s),
                Err(why) => {
                    assert_eq!(why, "the server's connection limit");
                    break;
                }
            }
        }
        assert_eq!(held.len() + others.len(), MAX_CONNECTIONS);
        drop(held);
        drop(others);
        let s = slots.lock().unwrap();
        assert_eq!((s.total, s.per_ip.len()), (0, 0));
    }

    #[test]
    fn a_held_place_is_given_back_by_its_last_holder() {
        let slots = Arc::new(Mutex::new(Slots::default()));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let held = Held(Arc::new(take_slot(&slots, ip).unwrap()));
        // The request's copy, which an upgraded connection's handler keeps.
        let kept = held.clone();
        drop(held);
        assert_eq!(slots.lock().unwrap().total, 1);
        drop(kept);
        assert_eq!(slots.lock().unwrap().total, 0);
    }
}
