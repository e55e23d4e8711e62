//! How much of what a writer handed to the kernel the destination may not have: the
//! part of the resend window that must go out again after a broken connection.
//!
//! Bytes written to a TCP socket are in one of three places when the connection breaks:
//! - not acknowledged by the peer's kernel (our send queue, in flight): Linux tells exactly
//!   how many with `SIOCOUTQ`, and keeps the figure on a socket that was reset;
//! - acknowledged but still in the peer's receive queue or in its application's read buffer,
//!   lost if the peer process dies: no TCP figure says how much (the window a fast reader
//!   advertises on loopback grows to 32 MiB while it holds almost nothing), so a fixed
//!   [`PEER_ALLOWANCE`] covers it;
//! - processed by the peer: never re-sent.
//!
//! Elsewhere than Linux the first figure is unknown and the whole window is re-sent.

use tokio::net::TcpStream;

/// Bytes the peer may have acknowledged without processing them: carbon-cache (Twisted)
/// reads 64 KiB at a time and a receiver that keeps up holds little more in its kernel
/// queue; 256 KiB covers that four times over, and costs about 6 000 duplicate points per
/// break, not the 16 MiB window's 400 000. A receiver that falls behind holds more; what it
/// holds past this allowance is lost with it if it dies (at-least-once is kept against
/// connection breaks and receiver restarts that read their queue, which is what the
/// allowance is measured against in tests/flapping.rs).
pub const PEER_ALLOWANCE: usize = 256 << 10;

/// Bytes of the stream the destination may not have: the kernel's unacknowledged bytes plus
/// [`PEER_ALLOWANCE`]. `None` when the kernel cannot tell (then everything is re-sent).
pub fn at_risk(stream: &TcpStream) -> Option<usize> {
    unacknowledged(stream).map(|n| n + PEER_ALLOWANCE)
}

/// Bytes written to `stream` that the peer's kernel has not acknowledged (`SIOCOUTQ`).
#[cfg(target_os = "linux")]
pub fn unacknowledged(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ for sockets) writes one c_int through the pointer,
    // which points to a live local; the descriptor is owned by `stream` for this call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0 && n >= 0).then_some(n as usize)
}

/// Not Linux: unknown.
#[cfg(not(target_os = "linux"))]
pub fn unacknowledged(_stream: &TcpStream) -> Option<usize> {
    None
}
