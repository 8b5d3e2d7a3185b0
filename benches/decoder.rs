//! A benchmark, not a test and not part of CI: the decoder's CPU time on
//! the largest message of docs/packaging.md (250,000 bytes: a `pubkey:`
//! line, three ignored 63,000-byte lines, a 60,886-byte `cmdline:` line),
//! framed and unframed, and on 62,500 short ignored lines, fed in 16 KiB
//! reads as `fetch` reads the port; then `fetch` itself end to end against
//! a FIFO standing in for the port (the host writing the message whole and
//! disconnecting, the files written to a tmpfs, /dev/shm), its CPU time
//! the child's own (`wait4`). Reports medians and quartiles; asserts only
//! that every run decodes the message. CPU time grows with what else runs
//! (caches, memory bandwidth): note the load average with the figures.
//!
//! Run by hand: `cargo bench --bench decoder` (the bench profile is the
//! release one: opt-level "z", LTO). `DECODER_RUNS=N` sets the number of
//! runs (default 200 in process, 100 end to end); `DECODER_FETCH_BIN=PATH`
//! runs another binary end to end (docs/packaging.md's figures are of the
//! static musl build).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};
use nix::time::{clock_gettime, ClockId};
use vport_bootargs::wire::{digest_hex, end_line, Decoder, MAX_LINE};

const KEY_START: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC";

/// docs/packaging.md's message: 250,000 bytes unframed.
fn large_message() -> (String, String) {
    let ignored = format!("x-ignored:{}\n", "y".repeat(63_000 - 10)).repeat(3);
    let cmdline: String = (0..)
        .map(|i| format!("key{i}=value-{i:05} "))
        .flat_map(|pair| pair.chars().collect::<Vec<_>>())
        .take(60_886 - 8)
        .collect();
    let cmdline = format!("{cmdline}x=1");
    let rest = 250_000 - ignored.len() - "cmdline:\n".len() - cmdline.len();
    let pad = rest - "pubkey:".len() - KEY_START.len() - " root@host\n".len();
    let key = format!("{KEY_START}{} root@host", "A".repeat(pad));
    let body = format!("pubkey:{key}\n{ignored}cmdline:{cmdline}\n");
    assert_eq!(body.len(), 250_000);
    assert!(cmdline.len() + 8 <= MAX_LINE);
    (body, cmdline)
}

fn thread_cpu() -> Duration {
    Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap())
}

/// One decode of `bytes` in 16 KiB reads; its CPU time.
fn decode_once(bytes: &[u8], want: Option<&str>) -> Duration {
    let start = thread_cpu();
    let mut d = Decoder::new();
    for read in bytes.chunks(16 * 1024) {
        d.feed(read).unwrap();
        std::hint::black_box(d.drain_lines());
    }
    let m = d.finish().unwrap();
    let spent = thread_cpu() - start;
    assert_eq!(m.as_ref().map(|m| m.cmdline.as_str()), want);
    spent
}

fn runs(default: usize) -> usize {
    std::env::var("DECODER_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// "median M ms (quartiles Q1-Q3 ms, N runs)".
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |i: usize| times[i].as_secs_f64() * 1000.0;
    let n = times.len();
    format!(
        "median {:.3} ms (quartiles {:.3}-{:.3} ms, {n} runs)",
        ms(n / 2),
        ms(n / 4),
        ms(3 * n / 4)
    )
}

fn main() {
    let (body, cmdline) = large_message();
    let framed = format!("{body}{}", end_line(body.as_bytes()));
    let short = "x:y\n".repeat(62_500) + "cmdline:a=1\n";
    let cases: [(&str, &[u8], Option<&str>); 3] = [
        (
            "250,000-byte message, unframed",
            body.as_bytes(),
            Some(&cmdline),
        ),
        (
            "250,000-byte message, framed",
            framed.as_bytes(),
            Some(&cmdline),
        ),
        (
            "62,500 short ignored lines, then a cmdline",
            short.as_bytes(),
            Some("a=1"),
        ),
    ];
    println!("decoder CPU time (thread CPU clock), 16 KiB reads:");
    for (label, bytes, want) in cases {
        for _ in 0..10 {
            decode_once(bytes, want);
        }
        let times = (0..runs(200)).map(|_| decode_once(bytes, want)).collect();
        println!("  {label}: {}", summary(times));
    }
    // What the framed figure holds besides decoding: its digest.
    let times = (0..runs(200))
        .map(|_| {
            let start = thread_cpu();
            std::hint::black_box(digest_hex(std::hint::black_box(body.as_bytes())));
            thread_cpu() - start
        })
        .collect();
    println!(
        "  of which SHA-256 of the 250,000 bytes: {}",
        summary(times)
    );
    println!(
        "fetch end to end against a FIFO (child CPU from wait4, wall from spawn to exit), {}:",
        fetch_binary().display()
    );
    for (label, bytes) in [("unframed", body.as_bytes()), ("framed", framed.as_bytes())] {
        let (cpu, wall): (Vec<_>, Vec<_>) =
            (0..runs(100)).map(|_| fetch_once(bytes, &cmdline)).unzip();
        println!("  {label}: CPU {}", summary(cpu));
        println!("  {label}: wall {}", summary(wall));
    }
}

/// The binary to run: `DECODER_FETCH_BIN` (e.g. the static musl build
/// that ships, `target/x86_64-unknown-linux-musl/release/vport-bootargs`),
/// else this build's.
fn fetch_binary() -> std::path::PathBuf {
    std::env::var_os("DECODER_FETCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_vport-bootargs").into())
}

/// One `fetch --no-ack` of `bytes`, waiting in a FIFO whose writer is
/// gone once fetch has read it: (child CPU, wall).
// The child is reaped by wait4, which gives its CPU time.
#[allow(clippy::zombie_processes)]
fn fetch_once(bytes: &[u8], cmdline: &str) -> (Duration, Duration) {
    // The files go to a tmpfs, as in docs/packaging.md's figures: an
    // ext4 fsync would add its journal's CPU to fetch's.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let root = dir.path();
    let class = root.join("sys/class/virtio-ports/vport0p1");
    fs::create_dir_all(&class).unwrap();
    fs::write(class.join("name"), "s-1-VM.vport\n").unwrap();
    fs::write(class.join("dev"), "251:1\n").unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    let node = root.join("dev/vport0p1");
    nix::unistd::mkfifo(&node, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The host: connected before fetch starts, the whole message in the
    // pipe; it disconnects (closes) right after spawning, so fetch reads
    // the message and then 0.
    let mut host = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .unwrap();
    fcntl(host.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
    host.write_all(bytes).unwrap();
    let started = Instant::now();
    let child = Command::new(fetch_binary())
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--dev-root")
        .arg(root.join("dev"))
        .args([
            "-q",
            "fetch",
            "--no-ack",
            "--fifo-stand-in",
            "--settle",
            "0.05",
            "--cache-dir",
        ])
        .arg(root.join("cache"))
        .arg("--ssh-dir")
        .arg(root.join("ssh"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // fetch opens the FIFO for reading; once it holds it (or is done: a
    // framed message ends at its end line), the host leaves.
    let opened = Instant::now();
    let holds_or_done = || {
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let done = stat
            .rsplit_once(") ")
            .map_or(true, |(_, rest)| rest.starts_with('Z'));
        done || fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == node))
            })
            .unwrap_or(false)
    };
    while !holds_or_done() {
        assert!(
            opened.elapsed() < Duration::from_secs(30),
            "fetch never opened the FIFO"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(host);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own unreaped child, with valid pointers.
    let pid = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(pid, child.id() as i32);
    assert_eq!(status, 0, "fetch failed");
    let tv = |t: nix::libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    assert_eq!(
        fs::read_to_string(root.join("cache/cmdline")).unwrap(),
        format!("{cmdline}\n")
    );
    (cpu, wall)
}
