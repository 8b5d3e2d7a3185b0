//! The figures the VM tests measure: printed as they come (straight to
//! stderr, so cargo's output capture does not hide them) and gathered in
//! <target>/vm/report.txt (x86_64 guests) or <target>/vm-aarch64/report.txt
//! (aarch64 guests). Reported, never asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Starts a fresh report for this test process.
pub fn reset(vm_dir: &Path) {
    let parts = vm_dir.join("report.d");
    let _ = std::fs::remove_dir_all(&parts);
    std::fs::create_dir_all(&parts).expect("report dir");
    *DIR.lock().unwrap() = Some(vm_dir.to_owned());
}

/// One line that is not a figure (e.g. how the accelerator was chosen).
pub fn note(line: &str) {
    record("00-notes", &[line.to_owned()]);
}

/// Adds `lines` under `section` and rewrites report.txt with every section
/// recorded so far, the machine first.
pub fn record(section: &str, lines: &[String]) {
    let guard = DIR.lock().unwrap();
    let Some(dir) = guard.as_ref() else { return };
    let parts = dir.join("report.d");
    let path = parts.join(format!("{section}.txt"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    for l in lines {
        text += l;
        text.push('\n');
        let _ = writeln!(std::io::stderr(), "vm report: {l}");
    }
    std::fs::write(&path, text).expect("report part");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&parts)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    let mut all = String::new();
    for n in names {
        all += &std::fs::read_to_string(&n).unwrap_or_default();
    }
    std::fs::write(dir.join("report.txt"), all).expect("report.txt");
}

/// The machine the figures come from, and what the guests ran.
pub fn machine(
    qemu: &str,
    accel: &str,
    rust_target: &str,
    binary_size: u64,
    kernel_package: &str,
) -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    vec![
        format!("machine: {cores} cores, {cpu}; accelerator {accel}"),
        format!("qemu: {version}; guest kernel {kernel_package}"),
        format!("static binary ({rust_target}, release): {binary_size} bytes"),
    ]
}

/// Median and maximum of some durations, in milliseconds.
pub fn median_max(ms: &[f64]) -> (f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[n - 1])
}
