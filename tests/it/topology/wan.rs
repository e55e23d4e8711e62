//! A WAN link between a site namespace and the central one: delay and random loss in
//! each direction, changeable while traffic flows.
//!
//! Preferred: a veth pair shaped by `tc qdisc … netem` on both ends. Kernels built
//! without `sch_netem` (this workplace's: `CONFIG_NET_SCH_NETEM is not set`) get the
//! same link from a userspace emulator instead: a TUN device in each namespace and
//! two threads per direction that read IP packets from one, drop each with the loss
//! probability, and write the rest into the other after the delay. Either way the
//! proxies' TCP connections cross a real lossy, slow IP link and recover from it
//! with the kernel's own retransmissions.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{run, Netns};

/// Interface name of the link inside the site namespace.
const SITE_DEV: &str = "wan";

/// How the link is shaped.
enum Shaper {
    /// `tc qdisc … netem` on both veth ends (namespace, device) pairs.
    Netem(Vec<(String, String)>),
    /// The userspace emulator; its loss is in parts per million.
    Tun {
        loss_ppm: Arc<AtomicU32>,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    },
}

/// One site's WAN link. Dropping it stops the emulator threads (the devices go with
/// the namespaces).
pub struct WanLink {
    shaper: Shaper,
    delay: Duration,
}

/// Addresses of one link: `site_cidr` in the site (e.g. `10.1.0.2/24`), `central_cidr`
/// in the central namespace (`10.1.0.1/24`), and the address the site routes over it.
pub struct Addressing<'a> {
    pub site_cidr: &'a str,
    pub central_cidr: &'a str,
    pub route_to: &'a str,
}

impl WanLink {
    /// Builds the link between `site` and `central` (device `central_dev` there), with
    /// `delay` and `loss_pct` in each direction.
    pub fn connect(
        site: &Netns,
        central: &Netns,
        central_dev: &str,
        addrs: &Addressing,
        delay: Duration,
        loss_pct: f64,
    ) -> WanLink {
        let shaper = match netem(site, central, central_dev, delay, loss_pct) {
            Ok(ends) => Shaper::Netem(ends),
            Err(why) => {
                println!(
                    "topology: tc netem unavailable ({why}); using the userspace WAN emulator"
                );
                tun_link(site, central, central_dev, delay, loss_pct)
            }
        };
        site.ip(&["addr", "add", addrs.site_cidr, "dev", SITE_DEV]);
        site.ip(&["link", "set", SITE_DEV, "up"]);
        central.ip(&["addr", "add", addrs.central_cidr, "dev", central_dev]);
        central.ip(&["link", "set", central_dev, "up"]);
        let via = addrs.central_cidr.split('/').next().unwrap();
        site.ip(&["route", "add", addrs.route_to, "via", via, "dev", SITE_DEV]);
        WanLink { shaper, delay }
    }

    /// What shapes the link, for the run's printout.
    pub fn describe(&self) -> String {
        match &self.shaper {
            Shaper::Netem(_) => format!("veth + tc netem, {:?} each way", self.delay),
            Shaper::Tun { .. } => format!("TUN + userspace emulator, {:?} each way", self.delay),
        }
    }

    /// Changes the loss of both directions.
    pub fn set_loss(&self, pct: f64) {
        match &self.shaper {
            Shaper::Netem(ends) => {
                for (ns, dev) in ends {
                    let (delay, loss) = netem_args(self.delay, pct);
                    let args = [
                        "-n", ns, "qdisc", "change", "dev", dev, "root", "netem", "delay", &delay,
                        "loss", &loss,
                    ];
                    run("tc", &args).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Shaper::Tun { loss_ppm, .. } => {
                loss_ppm.store((pct * 10_000.0) as u32, Ordering::Relaxed)
            }
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        if let Shaper::Tun { stop, threads, .. } = &mut self.shaper {
            stop.store(true, Ordering::Relaxed);
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn netem_args(delay: Duration, pct: f64) -> (String, String) {
    (format!("{}ms", delay.as_millis()), format!("{pct}%"))
}

/// A veth pair with netem on both ends; Err (after removing the pair) when the
/// kernel has no netem.
fn netem(
    site: &Netns,
    central: &Netns,
    central_dev: &str,
    delay: Duration,
    loss_pct: f64,
) -> Result<Vec<(String, String)>, String> {
    let (s, c) = (site.name().to_string(), central.name().to_string());
    run(
        "ip",
        &[
            "link",
            "add",
            SITE_DEV,
            "netns",
            &s,
            "type",
            "veth",
            "peer",
            "name",
            central_dev,
            "netns",
            &c,
        ],
    )?;
    let ends = vec![
        (s.clone(), SITE_DEV.to_string()),
        (c, central_dev.to_string()),
    ];
    let (d, l) = netem_args(delay, loss_pct);
    for (ns, dev) in &ends {
        let args = [
            "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "delay", &d, "loss", &l,
        ];
        if let Err(e) = run("tc", &args) {
            let _ = run("ip", &["-n", &s, "link", "del", SITE_DEV]);
            return Err(e);
        }
    }
    Ok(ends)
}

/// `TUNSETIFF` = `_IOW('T', 202, int)`; flags of `linux/if_tun.h`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device `name` in the calling thread's namespace; it disappears when
/// the returned file is closed.
fn open_tun(name: &str) -> File {
    // SAFETY: a plain open(2) of the TUN clone device.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor this File now owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq at the valid pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

fn tun_link(
    site: &Netns,
    central: &Netns,
    central_dev: &str,
    delay: Duration,
    loss_pct: f64,
) -> Shaper {
    let site_tun = Arc::new(site.exec(|| open_tun(SITE_DEV)));
    let central_tun = Arc::new(central.exec(|| open_tun(central_dev)));
    let loss_ppm = Arc::new(AtomicU32::new((loss_pct * 10_000.0) as u32));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (seed, from, to) in [
        (
            0x9e37_79b9_7f4a_7c15_u64,
            site_tun.clone(),
            central_tun.clone(),
        ),
        (0xd1b5_4a32_d192_ed03_u64, central_tun, site_tun),
    ] {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (loss, stop_r, stop_w) = (loss_ppm.clone(), stop.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            read_side(&from, &tx, delay, &loss, &stop_r, seed)
        }));
        threads.push(std::thread::spawn(move || write_side(&to, &rx, &stop_w)));
    }
    Shaper::Tun {
        loss_ppm,
        stop,
        threads,
    }
}

/// Reads packets, drops each with the current loss, queues the rest with their
/// delivery time. Polls in 100 ms slices so a stop is noticed.
fn read_side(
    from: &File,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    delay: Duration,
    loss_ppm: &AtomicU32,
    stop: &AtomicBool,
    mut rng: u64,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok(n) = (&*from).read(&mut buf) else {
            return;
        };
        // xorshift64: uniform enough for a loss rate, and needs no crate.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (rng % 1_000_000) < u64::from(loss_ppm.load(Ordering::Relaxed)) {
            continue;
        }
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

/// Writes each queued packet at its delivery time (a constant delay keeps FIFO order).
fn write_side(to: &File, rx: &mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((at, packet)) => {
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                // A packet the kernel refuses (device going down) is lost, as on a wire.
                let _ = (&*to).write(&packet);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => return,
        }
    }
}
