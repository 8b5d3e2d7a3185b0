//! `fetch` end to end against a fake tree whose port is a FIFO (`--no-ack`
//! opens it read-only): delivery, waiting for the host and for the port,
//! which port is read, and reboots. The FIFO reads 0 while no writer is
//! connected, as the real port does while the host is not; the real driver
//! is tested in tests/vm.rs, refused and hostile conditions in
//! tests/hostile.rs.
//!
//! A test that plays the host connects once fetch has logged that it holds
//! the port open, and waits on fetch's log lines or on its being asleep in
//! the kernel, never on a guessed sleep.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Output;

use common::*;

/// CloudStack's message: the test key and CMDLINE.
fn whole_message() -> String {
    message(CMDLINE, Some(KEY))
}

/// fetch exited 0 and stored CMDLINE.
fn assert_stored(t: &Tree, out: &Output) {
    assert_eq!(code(out), 0, "{}", stderr(out));
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

/// The host writes the whole message to `node` and leaves; `f` must exit 0 having stored it.
fn host_delivers(mut f: Running, t: &Tree, node: &Path) -> Output {
    f.host_write(node, whole_message().as_bytes());
    let out = f.finish();
    assert_stored(t, &out);
    out
}

// ---------------------------------------------------------------------------
// Delivery.

#[test]
fn late_writer_is_delivered_with_exact_files_and_modes() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let node = t.add_port("vport0p2", Some(PORT));
    let mut f = Running::spawn(&mut t.fetch(&[]));
    // Late: fetch holds the port open and sleeps on it before the host comes.
    f.wait_for_line("opened port");
    f.wait_until_asleep();
    let out = host_delivers(f, &t, &node);
    let key = format!("{KEY}\n");
    assert_eq!(read(&t.cache().join("authorized_keys")).unwrap(), key);
    assert_eq!(read(&t.ssh().join("authorized_keys")).unwrap(), key);
    assert_eq!(mode(&t.cache().join("cmdline")), 0o644);
    assert_eq!(mode(&t.cache().join("authorized_keys")), 0o600);
    assert_eq!(mode(&t.ssh().join("authorized_keys")), 0o600);
    assert_eq!(mode(&t.ssh()), 0o700);
    assert_eq!(
        listing(&t.cache()),
        ["authorized_keys", "cmdline"],
        "no temp files left"
    );
    assert!(stderr(&out).contains("opened port s-1-VM.vport"));
}

#[test]
fn writer_that_stays_connected_is_done_after_settle() {
    let t = Tree::with_port();
    let mut f = Running::spawn(&mut t.fetch(&[]));
    // The host keeps the FIFO open until fetch has finished.
    let mut host = f.connect(&t.node("vport0p1"));
    host.write_all(whole_message().as_bytes()).unwrap();
    let out = f.finish();
    drop(host);
    assert_stored(&t, &out);
}

#[test]
fn message_split_into_single_bytes_is_delivered() {
    let t = Tree::with_port();
    let mut f = Running::spawn(&mut t.fetch(&[]));
    {
        let mut host = f.connect(&t.node("vport0p1"));
        for b in whole_message().bytes() {
            host.write_all(&[b]).unwrap();
        }
    }
    let out = f.finish();
    assert_stored(&t, &out);
}

#[test]
fn pubkey_without_cmdline_is_not_a_message() {
    let t = Tree::with_port();
    let mut f = Running::spawn(&mut t.fetch(&[("--timeout", "1.5")]));
    f.host_write(&t.node("vport0p1"), format!("pubkey:{KEY}\n").as_bytes());
    let out = f.finish();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(!t.ssh().exists(), "key not stored alone");
}

#[test]
fn no_pubkey_line_leaves_key_files_as_they_are() {
    let t = Tree::with_port();
    write_file(&t.ssh().join("authorized_keys"), "old key\n");
    let mut f = Running::spawn(&mut t.fetch(&[]));
    f.host_write(&t.node("vport0p1"), b"cmdline:a=b\n");
    let out = f.finish();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.stored_cmdline().unwrap(), "a=b\n");
    assert_eq!(read(&t.ssh().join("authorized_keys")).unwrap(), "old key\n");
    assert!(!t.cache().join("authorized_keys").exists());
}

// ---------------------------------------------------------------------------
// A host that never comes.

/// Also the claim that waiting costs nothing: fetch sleeps on the silent
/// port, so its CPU time over the 3 s wait stays within 10 ms (one clock
/// tick); a loop that polled, even every millisecond, would not.
#[test]
fn host_never_connects_fresh_boot_exits_69_storing_nothing_and_uses_no_cpu_waiting() {
    let t = Tree::with_port();
    let before = listing(t.root());
    let mut f = Running::spawn(&mut t.fetch(&[("--timeout", "3")]));
    f.wait_for_line("opened port");
    f.wait_until_asleep();
    let start = cpu_ms(f.pid());
    f.wait_exited_unreaped();
    let waiting = cpu_ms(f.pid()) - start;
    eprintln!("fetch used {waiting} ms of CPU while waiting 3 s for a silent host");
    assert!(waiting <= 10, "{waiting} ms of CPU while waiting");
    let out = f.finish();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(error_line(&out).contains("no complete message arrived on port s-1-VM.vport"));
    assert_eq!(listing(t.root()), before, "nothing written");
}

#[test]
fn host_never_connects_on_reboot_keeps_the_stored_files() {
    let t = Tree::with_port();
    t.store_old();
    let before = listing(t.root());
    let out = t.fetch(&[("--grace", "0.5")]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("keeping those in"));
    assert_eq!(t.targets(), old_targets());
    assert_eq!(listing(t.root()), before, "nothing created");
}

#[test]
fn reboot_takes_fresh_data_within_grace() {
    let t = Tree::with_port();
    write_file(&t.cache().join("cmdline"), "type=old\n");
    let f = Running::spawn(&mut t.fetch(&[("--grace", "5")]));
    host_delivers(f, &t, &t.node("vport0p1"));
}

#[test]
fn damaged_stored_cmdline_does_not_keep_fresh_parameters_out() {
    let t = Tree::with_port();
    t.store_old();
    fs::write(t.cache().join("cmdline"), b"type=\xff\xfe damaged\n").unwrap();
    let _host = t.offer("vport0p1", message(CMDLINE_NEW, Some(KEY_NEW)).as_bytes());
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("not valid UTF-8; reading the port as on a first boot"));
    assert_eq!(t.targets(), new_targets());
}

// ---------------------------------------------------------------------------
// Ports: which one is read, and what happens when none is there.

#[test]
fn port_that_appears_late_is_found_and_read() {
    let t = Tree::new();
    let mut f = Running::spawn(t.fetch(&[]).arg("--verbose"));
    f.wait_for_line("yet among 0 port(s); waiting");
    f.wait_until_asleep();
    // The node comes first, the name later (the kernel's `change` uevent):
    // fetch wakes, rescans with the nameless port there, and sleeps again
    // before the name comes.
    let sleeps = f.sleeps();
    t.add_port("vport0p1", None);
    f.wait_until_asleep_after(sleeps);
    fs::write(
        t.sys().join("class/virtio-ports/vport0p1/name"),
        "s-1-VM.vport\n",
    )
    .unwrap();
    host_delivers(f, &t, &t.node("vport0p1"));
}

#[test]
fn reboot_without_port_keeps_stored_cmdline() {
    let t = Tree::new();
    write_file(&t.cache().join("cmdline"), "type=old\n");
    let out = t
        .fetch(&[("--grace", "0.5"), ("--port-timeout", "0.5")])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("keeping those"));
    assert_eq!(t.stored_cmdline().unwrap(), "type=old\n");
}

#[test]
fn no_matching_port_exits_69_naming_the_pattern() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("something.else"));
    let out = t.fetch(&[("--port-timeout", "0.6")]).output().unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(error_line(&out).contains("no virtio port matching pattern *.vport"));
}

#[test]
fn port_without_name_attribute_is_not_read_and_fetch_exits_69() {
    let t = Tree::new();
    t.add_port("vport0p1", None);
    let out = t.fetch(&[("--port-timeout", "1")]).output().unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(error_line(&out).contains("no virtio port matching pattern *.vport appeared under"));
    assert_eq!(t.targets(), [None, None, None]);
}

#[test]
fn guest_agent_port_is_never_opened() {
    let t = Tree::new();
    let agent = t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let mut f = Running::spawn(&mut t.fetch(&[("--pattern", "*"), ("--port-timeout", "1.5")]));
    // A non-blocking open for writing fails with ENXIO exactly while no
    // reader holds the FIFO: probe it for as long as fetch runs.
    let mut probes = 0;
    let mut opened_by_someone = false;
    while f.try_wait().is_none() {
        let r = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&agent);
        match r {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            _ => opened_by_someone = true,
        }
        probes += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = f.finish();
    assert!(probes > 10);
    assert!(!opened_by_someone, "the guest agent's port was opened");
    assert_eq!(code(&out), 69, "{}", stderr(&out));
}

#[test]
fn name_of_guest_agent_port_is_a_usage_error() {
    let t = Tree::new();
    let out = t
        .fetch(&[("--name", "org.qemu.guest_agent.0")])
        .output()
        .unwrap();
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("never opens"));
}

#[test]
fn name_selects_one_of_several_matching_ports() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("a.vport"));
    let b = t.add_port("vport0p2", Some("b.vport"));
    let mut f = Running::spawn(&mut t.fetch(&[("--name", "b.vport")]));
    f.host_write(&b, b"cmdline:from=b\n");
    let out = f.finish();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.stored_cmdline().unwrap(), "from=b\n");
}

#[test]
fn several_matching_ports_the_first_in_vport_order_is_read_with_a_warning() {
    let t = Tree::new();
    // Numeric order: vport0p2 before vport0p10 before vport1p1.
    t.add_port("vport1p1", Some("c.vport"));
    t.add_port("vport0p10", Some("b.vport"));
    t.add_port("vport0p2", Some("a.vport"));
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let _a = t.offer("vport0p2", b"cmdline:from=vport0p2\n");
    let _b = t.offer("vport0p10", b"cmdline:from=vport0p10\n");
    let _c = t.offer("vport1p1", b"cmdline:from=vport1p1\n");
    let _ga = t.offer("vport0p1", b"cmdline:from=guest-agent\n");
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(t.targets()[0].as_deref(), Some("from=vport0p2\n"));
    let log = stderr(&out);
    assert!(
        log.lines()
            .any(|l| l.contains("warning: several ports match")
                && l.contains("chose a.vport (vport0p2)")
                && l.contains("b.vport (vport0p10)")
                && l.contains("c.vport (vport1p1)")),
        "{log}"
    );
}

#[test]
#[ignore = "needs root (mknod); run by tests/run-all.sh"]
fn character_device_with_wrong_numbers_is_refused_unopened() {
    let t = Tree::new();
    t.add_sysfs("vport0p1", Some(PORT), "251:1");
    // /dev/null's numbers: a node that is not the port sysfs describes.
    nix::sys::stat::mknod(
        &t.node("vport0p1"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod needs root");
    let out = t.fetch(&[]).output().unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(error_line(&out).contains("is device 1:3 but sysfs says"));
}
