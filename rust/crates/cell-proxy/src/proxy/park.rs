//! Idle HTTP/1.1 connections without hyper's buffers.
//!
//! hyper's HTTP/1 server keeps a connection's read buffer (8–16 KiB), its
//! 8 KiB write buffer and its state for as long as the connection lives,
//! idle or not: two thirds of what an idle intercepted connection costs
//! (DHAT, docs/benchmarks.md). Agents keep pools of idle connections, and the
//! firewall VM is small. So, like nginx and Go's server, the proxy lets go of
//! those buffers between requests: once a connection has been at rest for
//! [`PARK_AFTER`], it asks hyper to end the connection gracefully, keeps the
//! stream (hyper's shutdown of it is skipped, see
//! [`crate::framing::FramingWatch`]), and waits for the next byte with
//! nothing but the TLS session and the watch. That byte starts a new hyper
//! connection on the same stream.
//!
//! Security rule: only a connection at rest is parked (no response being
//! sent, not one byte received since the last one ended — `Flags::at_rest`),
//! so a half-sent head never gets a fresh header timer from a new hyper
//! connection: a slow client is timed out as before. The wait for the next
//! request is bounded by the same keep-alive head timeout hyper applied.

use super::*;
use crate::framing::{Flags, FramingWatch};
use hyper::server::conn::http1;

/// How long a connection must be at rest before its buffers are released.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Serves HTTP/1.1 on `io` until the client is done, parking it between
/// requests. `wait_limit` bounds the wait for a parked connection's next
/// request.
pub(super) async fn serve_h1<S, Svc>(
    builder: &http1::Builder,
    mut io: FramingWatch<S>,
    service: Svc,
    flags: &Flags,
    wait_limit: Duration,
    parked: &crate::state::Gauge,
) -> Result<(), BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::HttpService<Incoming> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::ResBody: Send + 'static,
    <Svc::ResBody as hyper::body::Body>::Data: Send,
    <Svc::ResBody as hyper::body::Body>::Error: Into<BoxError>,
    Svc::Error: Into<BoxError>,
{
    loop {
        // Boxed: a parked connection's task keeps no room for hyper's state.
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(io), service.clone())
                .with_upgrades(),
        );
        tokio::select! {
            r = &mut *conn => return r.map_err(Into::into),
            () = at_rest_for(flags, PARK_AFTER) => {}
        }
        // Counted from here: a park that finds bytes after all is one too.
        let held = parked.hold();
        flags.parking.store(true, Ordering::SeqCst);
        Pin::new(&mut *conn).graceful_shutdown();
        let ended = (&mut *conn).await;
        flags.parking.store(false, Ordering::SeqCst);
        ended?;
        // Out of its box first: a box moved out of is freed only at the end
        // of its scope, which would be after the wait (840 bytes, DHAT).
        let conn = {
            let boxed = conn;
            *boxed
        };
        // `None`: a request that raced the shutdown was an upgrade, and the
        // stream now belongs to it. (hyper's clone of the service is dropped
        // here, with the rest of the connection.)
        let Some(http1::Parts {
            io: back, read_buf, ..
        }) = conn.into_parts()
        else {
            return Ok(());
        };
        io = back.into_inner();
        if !read_buf.is_empty() {
            io.replay(read_buf);
            continue;
        }
        // Even empty, it is hyper's whole 8 KiB read buffer (DHAT).
        drop(read_buf);
        // Parked: one byte (through the watch) says the next request is here.
        let mut first = [0u8; 1];
        let next = tokio::time::timeout(wait_limit, io.read(&mut first)).await;
        drop(held);
        match next {
            Ok(Ok(1)) => io.replay(Bytes::copy_from_slice(&first)),
            // The client closed: close our side as hyper would have.
            Ok(Ok(_)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e.into()),
            // Idle past the keep-alive head timeout: dropped, as hyper's
            // header timer drops it.
            Err(_) => return Ok(()),
        }
    }
}

/// Resolves once `flags` has been at rest, with nothing moving either way,
/// for `quiet` (checked every `quiet`, so within twice that).
async fn at_rest_for(flags: &Flags, quiet: Duration) {
    let moved = || flags.bytes_moved();
    let mut last = moved();
    loop {
        tokio::time::sleep(quiet).await;
        let now = moved();
        if now == last && flags.at_rest() {
            return;
        }
        last = now;
    }
}

/// A response body that tells the connection's [`Flags`] when it has ended
/// (or been dropped): until then the connection is never parked.
pub struct InFlight<B> {
    inner: B,
    flags: Option<Arc<Flags>>,
}

impl InFlight<()> {
    /// Marks a request as started on `flags`; it ends when the body this
    /// guard is carried over to does (or when the guard is dropped first).
    pub fn start(flags: Arc<Flags>) -> InFlight<()> {
        flags.request_started();
        InFlight {
            inner: (),
            flags: Some(flags),
        }
    }

    /// Carries the started request over to its response body.
    pub fn wrap<B>(mut self, inner: B) -> InFlight<B> {
        InFlight {
            inner,
            flags: self.flags.take(),
        }
    }
}

impl<B> InFlight<B> {
    fn end(&mut self) {
        if let Some(f) = self.flags.take() {
            f.request_ended();
        }
    }
}

impl<B> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
