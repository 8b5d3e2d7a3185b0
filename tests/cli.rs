//! `ports`, `get` and `show` against fake trees, and the command line's
//! exit codes.

mod common;

use std::fs;

use common::*;

fn run(c: &mut std::process::Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ports_json(t: &Tree, extra: &[&str]) -> Vec<serde_json::Value> {
    let (code, out, err) = run(t.cmd("ports").arg("--json").args(extra));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn chosen(ports: &[serde_json::Value]) -> Vec<String> {
    ports
        .iter()
        .filter(|p| p["chosen"] == true)
        .map(|p| p["port"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn vport_is_found_in_either_order() {
    for (agent, ours) in [("vport0p1", "vport0p2"), ("vport0p2", "vport0p1")] {
        let t = Tree::new();
        t.add_port(agent, Some("org.qemu.guest_agent.0"));
        t.add_port(ours, Some("s-1-VM.vport"));
        let ports = ports_json(&t, &[]);
        assert_eq!(chosen(&ports), [ours]);
        let a = ports.iter().find(|p| p["port"] == agent).unwrap();
        assert_eq!(a["name"], "org.qemu.guest_agent.0");
        assert!(a["verdict"].as_str().unwrap().contains("guest agent"));
    }
}

#[test]
fn ports_json_reports_node_dev_name_and_link() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("s-1-VM.vport"));
    t.add_link("s-1-VM.vport", "vport0p1");
    let ports = ports_json(&t, &[]);
    assert_eq!(ports.len(), 1);
    let p = &ports[0];
    assert_eq!(p["dev"], "251:1");
    assert_eq!(p["node"], t.node("vport0p1").display().to_string());
    assert_eq!(
        p["link"],
        t.dev()
            .join("virtio-ports/s-1-VM.vport")
            .display()
            .to_string()
    );
    assert_eq!(p["verdict"], "chosen");
}

#[test]
fn port_without_name_is_not_yet_chosen() {
    let t = Tree::new();
    t.add_port("vport0p1", None);
    let ports = ports_json(&t, &[]);
    assert_eq!(ports[0]["name"], serde_json::Value::Null);
    assert_eq!(ports[0]["verdict"], "ignored: no name yet");
    assert!(chosen(&ports).is_empty());
    // An empty name file counts the same.
    fs::write(t.sys().join("class/virtio-ports/vport0p1/name"), "\n").unwrap();
    assert!(chosen(&ports_json(&t, &[])).is_empty());
}

#[test]
fn only_the_guest_agent_port_means_none_chosen_even_with_a_catch_all_pattern() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    assert!(chosen(&ports_json(&t, &["--pattern", "*"])).is_empty());
}

#[test]
fn several_matches_choose_the_first_in_numeric_order() {
    let t = Tree::new();
    t.add_port("vport0p10", Some("a.vport"));
    t.add_port("vport0p9", Some("b.vport"));
    t.add_port("vport1p1", Some("c.vport"));
    let ports = ports_json(&t, &[]);
    let order: Vec<&str> = ports.iter().map(|p| p["port"].as_str().unwrap()).collect();
    assert_eq!(order, ["vport0p9", "vport0p10", "vport1p1"]);
    assert_eq!(chosen(&ports), ["vport0p9"]);
    assert_eq!(
        chosen(&ports_json(&t, &["--name", "c.vport"])),
        ["vport1p1"]
    );
}

#[test]
fn ports_table_marks_the_chosen_port() {
    let t = Tree::new();
    t.add_port("vport0p1", Some("org.qemu.guest_agent.0"));
    t.add_port("vport0p2", Some("s-1-VM.vport"));
    let (code, out, _) = run(&mut t.cmd("ports"));
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("PORT"));
    assert!(lines[1].starts_with("vport0p1") && lines[1].contains("never opened"));
    assert!(lines[2].starts_with("vport0p2") && lines[2].ends_with("chosen"));
}

#[test]
fn no_sysfs_class_means_no_ports() {
    let t = Tree::new();
    fs::remove_dir(t.sys().join("class/virtio-ports")).unwrap();
    let (code, out, _) = run(&mut t.cmd("ports"));
    assert_eq!(code, 0);
    assert_eq!(out, "no virtio ports\n");
}

fn with_cmdline(text: &str) -> Tree {
    let t = Tree::new();
    fs::create_dir_all(t.cache()).unwrap();
    fs::write(t.cache().join("cmdline"), text).unwrap();
    t
}

fn cache_arg(t: &Tree) -> [String; 2] {
    ["--cache-dir".into(), t.cache().display().to_string()]
}

#[test]
fn get_prints_the_last_value_and_exits_1_when_absent() {
    let t = with_cmdline("type=a key=QUJD== type=b public.network.device=eth2\n");
    let (code, out, _) = run(t.cmd("get").arg("type").args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (0, "b\n"));
    let (code, out, _) = run(t.cmd("get").arg("key").args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (0, "QUJD==\n"));
    let (code, out, _) = run(t
        .cmd("get")
        .arg("public.network.device")
        .args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (0, "eth2\n"));
    let (code, out, _) = run(t.cmd("get").arg("missing").args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (1, ""));
}

#[test]
fn get_without_stored_cmdline_exits_66() {
    let t = Tree::new();
    let (code, _, err) = run(t.cmd("get").arg("type").args(cache_arg(&t)));
    assert_eq!(code, 66);
    assert!(err.contains("no stored cmdline in"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn show_formats() {
    let t = with_cmdline("a=1 b.c=it's a=2\n");
    let (code, out, _) = run(t.cmd("show").args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (0, "a=1 b.c=it's a=2\n"));
    let (code, out, _) = run(t.cmd("show").args(["--format", "env"]).args(cache_arg(&t)));
    assert_eq!((code, out.as_str()), (0, "a='2'\nb_c='it'\\''s'\n"));
    let (code, out, _) = run(t.cmd("show").args(["--format", "json"]).args(cache_arg(&t)));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"a": "2", "b.c": "it's"}));
}

#[test]
fn show_env_sourced_by_sh_sets_values_and_runs_nothing() {
    let t = with_cmdline("x=$(touch${IFS}pwned) y=`touch${IFS}pwned` z=a;touch${IFS}pwned q='\"\n");
    let (code, out, _) = run(t.cmd("show").args(["--format", "env"]).args(cache_arg(&t)));
    assert_eq!(code, 0);
    let script = format!("{out}printf '%s|%s|%s|%s' \"$x\" \"$y\" \"$z\" \"$q\"");
    let res = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(t.root())
        .output()
        .unwrap();
    assert!(res.status.success());
    assert_eq!(
        String::from_utf8(res.stdout).unwrap(),
        "$(touch${IFS}pwned)|`touch${IFS}pwned`|a;touch${IFS}pwned|'\""
    );
    assert!(!t.root().join("pwned").exists());
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let t = Tree::new();
    let (code, _, _) = run(t.cmd("fetch").arg("--timeout").arg("soon"));
    assert_eq!(code, 64);
    let (code, _, _) = run(&mut t.cmd("frobnicate"));
    assert_eq!(code, 64);
    let (code, out, _) = run(t.cmd("fetch").arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("--port-timeout"));
}

#[test]
fn boot_and_record_shutdown_take_their_options_and_refuse_bad_ones_with_64() {
    let t = Tree::new();
    let (code, out, _) = run(t.cmd("boot").arg("--help"));
    assert_eq!(code, 0);
    for opt in [
        "--file-timeout",
        "--file-grace",
        "--state-dir",
        "--no-channel-after",
    ] {
        assert!(out.contains(opt), "{opt} missing from boot --help:\n{out}");
    }
    let (code, _, _) = run(t.cmd("boot").arg("--file-grace").arg("soon"));
    assert_eq!(code, 64);
    let (code, _, err) = run(t.cmd("record-shutdown").args(["--as", "hibernate"]));
    assert_eq!(code, 64, "{err}");
    let (code, _, err) =
        run(std::process::Command::new(BIN).args(["--sysfs-root", "/nonexistent/sys", "boot"]));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--sysfs-root /nonexistent/sys: no such directory"),
        "{err}"
    );
}

#[test]
fn a_seconds_value_that_is_not_digits_with_one_point_is_a_usage_error() {
    let t = Tree::new();
    for (v, why) in [
        ("1e3", "is not a number of seconds"),
        ("+5", "is not a number of seconds"),
        ("-1", "is not a number of seconds"),
        ("1.2.3", "is not a number of seconds"),
        ("31536001", "is out of range (0 to one year)"),
    ] {
        let (code, out, err) = run(t.cmd("fetch").arg(format!("--timeout={v}")));
        assert_eq!(code, 64, "{v}: {err}");
        assert!(out.is_empty(), "{v}: {out}");
        assert!(
            err.contains(&format!("invalid value '{v}' for '--timeout <SECS>'"))
                && err.contains(why),
            "{v}: {err}"
        );
    }
}
