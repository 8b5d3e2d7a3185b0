//! End-to-end `fetch` against a fake tree whose port is a FIFO (`--no-ack`
//! opens it read-only). The FIFO reads 0 while no writer is connected, as
//! the real port does while the host is not, so these pin down the waiting
//! and framing; the real driver is tested in tests/vm.rs.

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::thread;

use common::*;

#[test]
fn late_writer_is_delivered_with_exact_files_and_modes() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let node = t.add_port("vport0p2", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&[]);
    sleep_ms(1500);
    host_write(&node, message().as_bytes());
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    let key = format!("{KEY}\n");
    assert_eq!(t.read(t.cache().join("authorized_keys")).unwrap(), key);
    assert_eq!(t.read(t.ssh().join("authorized_keys")).unwrap(), key);
    assert_eq!(mode(&t.cache().join("cmdline")), 0o644);
    assert_eq!(mode(&t.cache().join("authorized_keys")), 0o600);
    assert_eq!(mode(&t.ssh().join("authorized_keys")), 0o600);
    assert_eq!(mode(&t.ssh()), 0o700);
    assert_eq!(
        listing(&t.cache()),
        ["authorized_keys", "cmdline"],
        "no temp files left"
    );
    assert!(err.contains("opened port s-1-VM.vport"), "{err}");
}

#[test]
fn writer_that_stays_connected_is_done_after_settle() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&[]);
    // The writer keeps the FIFO open until fetch has finished.
    let writer = thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&node).unwrap();
        f.write_all(message().as_bytes()).unwrap();
        f
    });
    let (code, err) = finish(child);
    drop(writer.join().unwrap());
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

#[test]
fn partial_line_then_disconnect_keeps_waiting_for_the_whole_message() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&[]);
    host_write(
        &node,
        format!("pubkey:{KEY}\ncmdline:template=do").as_bytes(),
    );
    sleep_ms(500);
    host_write(&node, message().as_bytes());
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
    assert!(err.contains("middle of a line"), "{err}");
}

#[test]
fn message_split_into_single_bytes_is_delivered() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&[]);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&node).unwrap();
        for b in message().bytes() {
            f.write_all(&[b]).unwrap();
            f.flush().unwrap();
        }
    }
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

#[test]
fn host_that_never_comes_exits_69_and_writes_nothing() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("s-1-VM.vport"));
    let (code, err) = finish(t.spawn_fetch(&["--timeout", "1"]));
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("no complete message arrived on port s-1-VM.vport"),
        "{err}"
    );
    assert!(!t.root().join("var").exists(), "nothing written");
    assert!(!t.root().join("root").exists(), "nothing written");
}

#[test]
fn pubkey_without_cmdline_is_not_a_message() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&["--timeout", "1.5"]);
    host_write(&node, format!("pubkey:{KEY}\n").as_bytes());
    let (code, err) = finish(child);
    assert_eq!(code, 69, "{err}");
    assert!(!t.root().join("root").exists(), "key not stored alone");
}

fn refused(bytes: Vec<u8>, problem: &str) {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    let child = t.spawn_fetch(&[]);
    let writer = thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&node).unwrap();
        // The helper may exit before all is written: a broken pipe is fine.
        let _ = f.write_all(&bytes);
    });
    let (code, err) = finish(child);
    writer.join().unwrap();
    assert_eq!(code, 65, "{err}");
    assert!(err.contains(problem), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1);
    assert!(!t.root().join("var").exists(), "nothing written");
    assert!(!t.root().join("root").exists(), "nothing written");
}

#[test]
fn oversized_line_exits_65_and_writes_nothing() {
    let mut bytes = b"cmdline:".to_vec();
    bytes.extend(vec![b'x'; 70 * 1024]);
    bytes.push(b'\n');
    refused(bytes, "longer than 65536 bytes");
}

#[test]
fn oversized_message_exits_65_and_writes_nothing() {
    let line = format!("x:{}\n", "y".repeat(60 * 1024));
    refused(line.repeat(5).into_bytes(), "larger than 262144 bytes");
}

#[test]
fn invalid_utf8_exits_65_and_writes_nothing() {
    refused(
        b"pubkey:ssh-rsa AAAA\xff\ncmdline:a=b\n".to_vec(),
        "not valid UTF-8",
    );
}

#[test]
fn nul_byte_exits_65_and_writes_nothing() {
    refused(b"cmdline:a=b\0c\n".to_vec(), "NUL byte");
}

#[test]
fn reboot_keeps_stored_cmdline_when_no_host_comes() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("s-1-VM.vport"));
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "type=old\n").unwrap();
    let (code, err) = finish(t.spawn_fetch(&["--grace", "0.5"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("keeping those"), "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "type=old\n");
    assert!(!t.ssh().exists());
}

#[test]
fn reboot_takes_fresh_data_within_grace() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "type=old\n").unwrap();
    let child = t.spawn_fetch(&["--grace", "5"]);
    host_write(&node, message().as_bytes());
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

#[test]
fn reboot_without_port_keeps_stored_cmdline() {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), "type=old\n").unwrap();
    let (code, err) = finish(t.spawn_fetch(&["--grace", "0.5", "--port-timeout", "0.5"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("keeping those"), "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "type=old\n");
}

#[test]
fn no_pubkey_line_leaves_key_files_as_they_are() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    fs::create_dir_all(t.ssh()).unwrap();
    fs::write(t.ssh().join("authorized_keys"), "old key\n").unwrap();
    let child = t.spawn_fetch(&[]);
    host_write(&node, b"cmdline:a=b\n");
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "a=b\n");
    assert_eq!(
        t.read(t.ssh().join("authorized_keys")).unwrap(),
        "old key\n"
    );
    assert!(!t.cache().join("authorized_keys").exists());
}

#[test]
fn fresh_data_replaces_a_planted_symlink_instead_of_following_it() {
    let t = Tree::new();
    let node = t.add_port("vport0p1", Some("s-1-VM.vport"));
    fs::create_dir_all(t.cache()).unwrap();
    let victim = t.root().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, t.cache().join("cmdline")).unwrap();
    let child = t.spawn_fetch(&["--grace", "5"]);
    host_write(&node, b"cmdline:a=b\n");
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = fs::symlink_metadata(t.cache().join("cmdline")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(t.stored_cmdline().unwrap(), "a=b\n");
}

#[test]
fn port_that_appears_late_is_found_and_read() {
    let t = Tree::new();
    let child = t.spawn_fetch(&[]);
    sleep_ms(800);
    // The node comes first, the name later (the kernel's `change` uevent).
    t.add_port("vport0p1", None);
    sleep_ms(800);
    fs::write(
        t.sys().join("class/virtio-ports/vport0p1/name"),
        "s-1-VM.vport\n",
    )
    .unwrap();
    host_write(&t.node("vport0p1"), message().as_bytes());
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), format!("{CMDLINE}\n"));
}

#[test]
fn no_matching_port_exits_69_naming_the_pattern() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("something.else"));
    let (code, err) = finish(t.spawn_fetch(&["--port-timeout", "0.6"]));
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("no virtio port matching pattern *.vport"),
        "{err}"
    );
}

#[test]
fn guest_agent_port_is_never_opened() {
    let t = Tree::new();
    let agent = t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    let child = t.spawn_fetch(&["--pattern", "*", "--port-timeout", "1.5"]);
    // A non-blocking open for writing fails with ENXIO exactly while no
    // reader holds the FIFO: probe it for as long as fetch runs.
    let mut probes = 0;
    let mut opened_by_someone = false;
    let start = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < 1.4 {
        let r = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&agent);
        match r {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            _ => opened_by_someone = true,
        }
        probes += 1;
        sleep_ms(20);
    }
    let (code, err) = finish(child);
    assert!(probes > 10);
    assert!(!opened_by_someone, "the guest agent's port was opened");
    assert_eq!(code, 69, "{err}");
}

#[test]
fn name_of_guest_agent_port_is_a_usage_error() {
    let t = Tree::new();
    let (code, err) = finish(t.spawn_fetch(&["--name", "org.qemu.guest_agent.0"]));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("never opens"), "{err}");
}

#[test]
fn name_selects_one_of_several_matching_ports() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("a.vport"));
    let b = t.add_port("vport0p2", Some("b.vport"));
    let child = t.spawn_fetch(&["--name", "b.vport"]);
    host_write(&b, b"cmdline:from=b\n");
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "from=b\n");
}

#[test]
fn several_matching_ports_warn_and_the_first_is_read() {
    let t = Tree::new();
    let a = t.add_port("vport0p1", Some("a.vport"));
    t.add_port("vport0p2", Some("b.vport"));
    let child = t.spawn_fetch(&[]);
    host_write(&a, b"cmdline:from=a\n");
    let (code, err) = finish(child);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.stored_cmdline().unwrap(), "from=a\n");
    let warning = err.lines().find(|l| l.contains("several ports")).unwrap();
    assert!(warning.contains("a.vport (vport0p1)"), "{warning}");
    assert!(warning.contains("b.vport (vport0p2)"), "{warning}");
}

#[test]
fn character_device_with_wrong_numbers_is_refused_unopened() {
    // Needs root (mknod); CI runs as root, and so must whoever runs this.
    let t = Tree::new();
    t.add_sysfs("vport0p1", Some("s-1-VM.vport"), "251:1");
    // /dev/null's numbers: a node that is not the port sysfs describes.
    nix::sys::stat::mknod(
        &t.node("vport0p1"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod needs root: run the tests as root");
    let (code, err) = finish(t.spawn_fetch(&[]));
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("is device 1:3 but sysfs says"), "{err}");
}

#[test]
fn cache_path_that_is_a_file_exits_74_and_keeps_it() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("s-1-VM.vport"));
    fs::create_dir_all(t.cache().parent().unwrap()).unwrap();
    fs::write(t.cache(), "not a dir").unwrap();
    // Found before the port is even opened: the host's data stays with it.
    let (code, err) = finish(t.spawn_fetch(&[]));
    assert_eq!(code, 74, "{err}");
    assert!(err.contains("Not a directory"), "{err}");
    assert!(err.contains("var/cache/cloud/cmdline"), "{err}");
    assert_eq!(fs::read_to_string(t.cache()).unwrap(), "not a dir");
}
