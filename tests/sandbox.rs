//! The jobs (boot, fetch, barrier) restrict themselves with Landlock
//! (src/guest/sandbox.rs) and
//! still do their work on a fake tree. What a restricted process cannot do
//! (write outside its directories, open other devices, write /proc) is
//! pinned down by the module's own tests, on the same rules these commands
//! build; here the commands themselves are run. Needs a kernel with
//! Landlock (the developer's and CI's machines have one).

mod common;

use std::fs;

use common::*;

#[test]
fn fetch_restricts_itself_to_its_paths_and_still_stores_the_message() {
    let t = Tree::with_port();
    let _host = t.offer("vport0p1", message(CMDLINE, Some(KEY)).as_bytes());
    let out = run_guarded(t.fetch(&[]).arg("-v"));
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("restricted to its paths with Landlock (ABI "))
        .unwrap_or_else(|| panic!("no restriction line in {err}"));
    assert!(
        line.contains(&format!("read {};", t.sys().display())),
        "{line}"
    );
    assert!(
        line.contains(&format!("devices {};", t.dev().display())),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "write {}, {}",
            t.cache().display(),
            t.ssh().display()
        )),
        "{line}"
    );
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    assert_eq!(
        read(&t.ssh().join("authorized_keys")).unwrap(),
        format!("{KEY}\n")
    );
}

#[test]
fn barrier_restricts_itself_to_its_paths_and_still_releases() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let proc_root = t.path("proc");
    fs::create_dir_all(&proc_root).unwrap();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "type=secstorage\n").unwrap();
    let out = run_guarded(
        t.cmd("barrier")
            .arg("-v")
            .arg("--proc-root")
            .arg(&proc_root)
            .arg("--cache-dir")
            .arg(t.cache())
            .args(["--timeout", "5"]),
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("restricted to its paths with Landlock"))
        .unwrap_or_else(|| panic!("no restriction line in {err}"));
    assert!(
        line.contains(&format!(
            "read {}, {}, {}; devices ; write {}",
            t.sys().display(),
            t.dev().display(),
            proc_root.display(),
            t.cache().display()
        )),
        "{line}"
    );
    assert!(err.contains("whole, fresh and valid"), "{err}");
}

#[test]
fn boot_restricts_itself_to_both_sides_paths_and_still_stores_the_message() {
    let t = Tree::with_port();
    let state = t.path("var/lib/vport-bootargs");
    let proc_root = t.path("proc");
    fs::create_dir_all(&state).unwrap();
    fs::create_dir_all(&proc_root).unwrap();
    // A record from the previous boot, which the job reads and removes.
    fs::write(state.join("shutdown"), "poweroff\n").unwrap();
    let _host = t.offer("vport0p1", message(CMDLINE, Some(KEY)).as_bytes());
    let out = run_guarded(
        t.cmd("boot")
            .args(["-v", "--no-ack", "--fifo-stand-in", "--settle", "0.05"])
            .arg("--cache-dir")
            .arg(t.cache())
            .arg("--ssh-dir")
            .arg(t.ssh())
            .arg("--state-dir")
            .arg(&state)
            .arg("--proc-root")
            .arg(&proc_root),
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("restricted to its paths with Landlock"))
        .unwrap_or_else(|| panic!("no restriction line in {err}"));
    assert!(
        line.contains(&format!(
            "read {}, {}; devices {}; write {}, {}, {}",
            t.sys().display(),
            proc_root.display(),
            t.dev().display(),
            t.cache().display(),
            t.ssh().display(),
            state.display()
        )),
        "{line}"
    );
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    assert!(!state.join("shutdown").exists(), "the record is taken");
}
