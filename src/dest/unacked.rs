//! How much of what a writer handed to the kernel the destination may not have: the
//! part of the resend window that must go out again after a broken connection.
//!
//! Bytes written to a TCP socket are in one of three places when the connection breaks:
//! - not acknowledged by the peer's kernel (our send queue, in flight): Linux tells exactly
//!   how many with `SIOCOUTQ`, and keeps the figure on a socket that was reset;
//! - acknowledged but still in the peer's receive queue or in its application's read buffer,
//!   lost if the peer process dies. No TCP figure says exactly how much: the window a fast
//!   reader advertises on loopback grows to 32 MiB while it holds almost nothing. But a
//!   receiver that falls behind advertises a window smaller than the largest it advertised
//!   on this connection, by a part of what it holds (measured: 113 KiB held, window down by
//!   50 KiB, as the kernel lets the buffer take more than it advertised); so the allowance
//!   is four times that shortfall, plus a fixed [`PEER_ALLOWANCE`] for the application's
//!   read buffer. A receiver that keeps up costs only the fixed part;
//! - processed by the peer: never re-sent.
//!
//! Elsewhere than Linux the first figure is unknown, before Linux 6.2 the peer's window is,
//! and then the whole window is kept and re-sent.
//!
//! Over TLS (`-destination-tls`) the kernel counts ciphertext, and the writer counts
//! plaintext as written once rustls took it. Every record carries its plaintext plus a
//! header and a tag, so the last N ciphertext bytes never carry more than N plaintext
//! bytes: re-sending the kernel's figure of plaintext from the tail re-sends at least what
//! those bytes carried. Three things are not in that figure, and [`TLS_SLACK`] covers them:
//! ciphertext rustls still holds unsent (at most its buffer limit, [`TLS_SEND_BUFFER`], set
//! on every connection); the record the figure starts inside of, whose first part the peer's
//! kernel has but which the peer cannot decrypt without the rest (at most one record); and
//! the peer's own partly received record (another). Records other than data (key updates)
//! only make the figure larger. So the tail re-sent is a superset: duplicates, never loss.

use tokio::net::TcpStream;

/// The limit set on rustls' buffer of unsent ciphertext on every TLS connection (rustls'
/// default): a write it cannot pass on to the socket stays there, counted as written.
pub const TLS_SEND_BUFFER: usize = 64 << 10;

/// A TLS record's largest size on the wire: 16 KiB of plaintext plus header, content type,
/// padding allowance and tag (RFC 8446 §5.2 caps the ciphertext at 2^14 + 256).
pub const TLS_RECORD: usize = (16 << 10) + 256 + 5;

/// What TLS adds to [`at_risk`]: rustls' unsent buffer and two records (see the module).
pub const TLS_SLACK: usize = TLS_SEND_BUFFER + 2 * TLS_RECORD;

/// Bytes the peer may have read without processing them: carbon-cache (Twisted) reads
/// 64 KiB at a time, and 128 KiB covers that twice over. Each break costs about 3 000
/// duplicate points for it, not the 16 MiB window's 400 000. What a receiver holds in its
/// kernel queue is measured from its window ([`at_risk`]).
pub const PEER_ALLOWANCE: usize = 128 << 10;

/// Bytes of the stream the destination may not have: the kernel's unacknowledged bytes,
/// four times the shortfall of the peer's window against `max_window` (the largest it advertised
/// on this connection, see [`peer_window`]) and [`PEER_ALLOWANCE`]. `None` when the kernel
/// cannot tell (then everything is re-sent).
pub fn at_risk(stream: &TcpStream, max_window: u32) -> Option<usize> {
    at_risk_from(unacknowledged(stream), peer_window(stream), max_window)
}

/// [`at_risk`] from the kernel's two figures. Both are needed: without the peer's window
/// (Linux before 6.2) what a receiver that fell behind holds in its kernel queue is unknown,
/// and can be megabytes (its buffer grows to `tcp_rmem`'s maximum while it keeps up), all lost
/// when it is killed; so then the whole resend window is kept and re-sent, as elsewhere than
/// Linux.
fn at_risk_from(unacked: Option<usize>, window: Option<u32>, max_window: u32) -> Option<usize> {
    let held = 4 * max_window.saturating_sub(window?) as usize;
    Some(unacked? + held + PEER_ALLOWANCE)
}

/// The receive window the peer last advertised (`tcpi_snd_wnd`, Linux 6.2 and later;
/// `None` before). Kept on a socket that was reset.
#[cfg(target_os = "linux")]
pub fn peer_window(stream: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    /// Offset of `tcpi_snd_wnd` in `struct tcp_info` (the struct only ever grows).
    const SND_WND: usize = 228;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info` and the new length into
    // `len`; both point to live locals, and `stream` owns the descriptor for this call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < SND_WND + 4 {
        return None;
    }
    let b = &info[SND_WND..SND_WND + 4];
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Not Linux: unknown.
#[cfg(not(target_os = "linux"))]
pub fn peer_window(_stream: &TcpStream) -> Option<u32> {
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_peers_window_everything_is_at_risk() {
        // A kernel without `tcpi_snd_wnd`: the receiver's unread queue is unknown.
        assert_eq!(at_risk_from(Some(1000), None, 1 << 20), None);
        assert_eq!(at_risk_from(None, Some(1 << 20), 1 << 20), None);
        // A receiver that keeps up holds nothing beyond the fixed allowance.
        assert_eq!(
            at_risk_from(Some(1000), Some(1 << 20), 1 << 20),
            Some(1000 + PEER_ALLOWANCE)
        );
        // One whose window shrank by 100 KiB may hold four times that.
        let shrunk = at_risk_from(Some(0), Some((1 << 20) - 100_000), 1 << 20);
        assert_eq!(shrunk, Some(400_000 + PEER_ALLOWANCE));
    }
}
