//! In-test Graphite plaintext receiver, for asserting exactly which lines a destination got
//! and for fault injection (destination down, destination back on the same port, slow reader).

use std::io::{self, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::net::free_port;

struct Shared {
    lines: Mutex<Vec<String>>,
    arrived: Condvar,
    connections: AtomicUsize,
    paused: AtomicBool,
    /// A line containing this makes the sink drop the connection before storing it, as
    /// carbon-cache does on a line it cannot take (everything after it in that read is lost).
    poison: Option<String>,
    /// Connections dropped because of `poison`.
    poisoned: AtomicUsize,
    /// Bytes asked of the kernel per read: what a killed receiver loses besides its
    /// kernel queue.
    read_size: usize,
    /// Pause after each read: a slow destination (zero: read as fast as possible).
    read_delay: Duration,
    /// Set by [`LineSink::catch_up`]: read as fast as possible from now on.
    caught_up: AtomicBool,
}

/// Open connections: a handle to shut each down, and its reader thread.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Conns,
}

/// Collects every line received on 127.0.0.1:`port` over any number of connections, in order
/// of arrival (interleaved per read chunk across connections). Lines are stored without the
/// trailing `\n`. The collected lines survive `stop()`/`restart()`.
pub struct LineSink {
    port: u16,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl LineSink {
    /// Listens on a fresh free port.
    pub fn start() -> LineSink {
        Self::start_on(free_port())
    }

    /// Listens on a given port, e.g. one reserved with `free_port()` and handed to the process
    /// under test before the destination exists ("destination comes up later"). Retries the
    /// bind for up to 10 s.
    pub fn start_on(port: u16) -> LineSink {
        Self::start_with(port, None, 256 * 1024)
    }

    /// A sink that reads 64 KiB at a time, as carbon-cache does (Twisted's
    /// `Connection.bufferSize`): killed, it loses what a killed carbon-cache loses.
    pub fn start_like_carbon() -> LineSink {
        Self::start_with(free_port(), None, 64 * 1024)
    }

    /// A sink that closes the connection whenever a line contains `marker` (the line and
    /// the rest of that read are not stored): a destination that refuses one record.
    pub fn start_closing_on(marker: &str) -> LineSink {
        Self::start_with(free_port(), Some(marker.to_string()), 64 * 1024)
    }

    fn start_with(port: u16, poison: Option<String>, read_size: usize) -> LineSink {
        let mut sink = LineSink {
            port,
            shared: Arc::new(Shared {
                lines: Mutex::new(Vec::new()),
                arrived: Condvar::new(),
                connections: AtomicUsize::new(0),
                paused: AtomicBool::new(false),
                poison,
                poisoned: AtomicUsize::new(0),
                read_size,
                read_delay: Duration::ZERO,
                caught_up: AtomicBool::new(false),
            }),
            running: None,
        };
        sink.listen();
        sink
    }

    /// A slow destination: reads `read_size` bytes at most every `delay`, with a small
    /// kernel receive buffer, so the sender's queue (not the kernel) holds the backlog.
    pub fn start_slow(read_size: usize, delay: Duration) -> LineSink {
        let mut sink = LineSink {
            port: free_port(),
            shared: Arc::new(Shared {
                lines: Mutex::new(Vec::new()),
                arrived: Condvar::new(),
                connections: AtomicUsize::new(0),
                paused: AtomicBool::new(false),
                poison: None,
                poisoned: AtomicUsize::new(0),
                read_size,
                read_delay: delay,
                caught_up: AtomicBool::new(false),
            }),
            running: None,
        };
        sink.listen();
        sink
    }

    /// A slow sink reads at full speed from now on, so that a test counting every line
    /// does not wait minutes for the backlog in the kernel buffers.
    pub fn catch_up(&self) {
        self.shared.caught_up.store(true, Ordering::Relaxed);
    }

    /// Alias of `start_on`, reads better when the port was reserved earlier.
    pub fn bind_later(port: u16) -> LineSink {
        Self::start_on(port)
    }

    fn listen(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("LineSink: bind 127.0.0.1:{}: {e}", self.port),
            }
        };
        if !self.shared.read_delay.is_zero() {
            small_receive_buffer(&listener);
        }
        // Non-blocking accept polled every few ms, so stop() can end the accept thread
        // without a wake-up connection.
        listener.set_nonblocking(true).expect("set_nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accept = {
            let (stop, conns, shared) = (stop.clone(), conns.clone(), self.shared.clone());
            std::thread::Builder::new()
                .name(format!("sink-accept-{}", self.port))
                .spawn(move || accept_loop(listener, stop, conns, shared))
                .expect("spawn accept thread")
        };
        self.running = Some(Running {
            stop,
            accept,
            conns,
        });
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A copy of every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.shared.lines.lock().unwrap().clone()
    }

    /// Removes and returns every line received so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.lines.lock().unwrap())
    }

    pub fn clear(&self) {
        self.shared.lines.lock().unwrap().clear();
    }

    pub fn count(&self) -> usize {
        self.shared.lines.lock().unwrap().len()
    }

    /// How many connections were accepted in total (all runs).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` lines have arrived; false on timeout.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.shared.lines.lock().unwrap();
        while lines.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = self
                .shared
                .arrived
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
        true
    }

    /// Waits until no new line has arrived for `idle`, at most `timeout`; returns the count.
    /// For asserting that nothing more (e.g. no duplicates) arrives.
    pub fn wait_idle(&self, idle: Duration, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = self.count();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let c = self.count();
            if c != last {
                last = c;
                since = Instant::now();
            } else if since.elapsed() >= idle {
                break;
            }
        }
        last
    }

    /// How many connections were dropped on the poison marker.
    pub fn poisoned(&self) -> usize {
        self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Waits until some connection was accepted (the process under test connected).
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.connections() >= n)
    }

    /// While paused, connections stay open but nothing is read, so the sender's socket buffer
    /// fills and it sees back-pressure.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the listener and every open connection; returns once the port refuses
    /// connections. A partial line in flight is discarded.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        let _ = running.accept.join();
        let conns = std::mem::take(&mut *running.conns.lock().unwrap());
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, handle) in conns {
            let _ = handle.join();
        }
    }

    /// Listens again on the same port (after `stop()`), keeping the lines collected so far.
    pub fn restart(&mut self) {
        self.stop();
        self.listen();
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 16 KiB receive buffer, inherited by accepted connections (set before `listen`'s
/// window is advertised), so a slow reader backs up into the sender quickly.
fn small_receive_buffer(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 16 * 1024;
    // SAFETY: a valid socket descriptor and a c_int option value of the right length.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, conns: Conns, shared: Arc<Shared>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let Ok(handle_side) = stream.try_clone() else {
                    continue;
                };
                let (stop, shared) = (stop.clone(), shared.clone());
                let reader = std::thread::spawn(move || read_loop(stream, stop, shared));
                conns.lock().unwrap().push((handle_side, reader));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // The listener is dropped here, so the port refuses from now on.
}

fn read_loop(mut stream: TcpStream, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; shared.read_size];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        while shared.paused.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !shared.read_delay.is_zero() && !shared.caught_up.load(Ordering::Relaxed) {
            std::thread::sleep(shared.read_delay);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let chunk = &buf[..n];
        let mut batch = Vec::new();
        let mut start = 0;
        let mut poisoned = false;
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                let line = if partial.is_empty() {
                    String::from_utf8_lossy(&chunk[start..i]).into_owned()
                } else {
                    partial.extend_from_slice(&chunk[start..i]);
                    let l = String::from_utf8_lossy(&partial).into_owned();
                    partial.clear();
                    l
                };
                start = i + 1;
                if shared
                    .poison
                    .as_ref()
                    .is_some_and(|p| line.contains(p.as_str()))
                {
                    poisoned = true;
                    break;
                }
                batch.push(line);
            }
        }
        if !poisoned {
            partial.extend_from_slice(&chunk[start..]);
        }
        if !batch.is_empty() {
            shared.lines.lock().unwrap().extend(batch);
            shared.arrived.notify_all();
        }
        if poisoned {
            shared.poisoned.fetch_add(1, Ordering::SeqCst);
            // Unread bytes make the close a reset, as when carbon-cache drops a connection.
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
    // Close our side too (the accept thread holds a clone of this socket for stop()).
    let _ = stream.shutdown(Shutdown::Both);
    // A clean EOF: keep a last line that had no newline. After stop() it is a fragment: drop it.
    if !partial.is_empty() && !stop.load(Ordering::SeqCst) {
        shared
            .lines
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&partial).into_owned());
        shared.arrived.notify_all();
    }
}
