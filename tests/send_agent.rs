//! `vport-bootargs send --guest-agent` against a fake `virsh` (a shell
//! script of the test's own, given with --virsh) that plays libvirt and
//! qemu-ga: its shell mode answers domstate, dumpxml and qemu-agent-command
//! as virsh 9.0 prints them (prompt and echoed command included), its
//! `event` mode prints the agent-lifecycle line, and the guest's file is a
//! file in the test's directory. Every scenario the script can play wrong
//! is a documented exit code and one line. No root, no libvirt.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The fake virsh. Its knobs are files in $FAKE (the directory it lives
/// in): `state` (domstate's answer; absent: no such domain), `channel`
/// (connected, disconnected, none), `event_after` (seconds until the waiter
/// prints the connected event; absent: never), `xml_after` (seconds after
/// the first look at the XML until it says connected), `sync` (wrong: an
/// answer with another id), `readback` (cut: reads give 10 bytes less;
/// cut-once: only the first read-back), `open` (fail). It logs each process
/// it is started as to `calls`, and each agent command to `commands`.
const FAKE_VIRSH: &str = r#"#!/bin/sh
FAKE=$(dirname "$0")
echo "virsh $*" >>"$FAKE/calls"
[ "$1" = -q ] && shift
guest=$FAKE/guest-file
if [ "${1:-}" = event ]; then
    if [ -f "$FAKE/event_after" ]; then
        sleep "$(cat "$FAKE/event_after")"
        echo "event 'agent-lifecycle' for domain 'vm': state: 'connected' reason: 'channel event'"
    fi
    exec sleep 600
fi
[ $# -eq 0 ] || { echo "fake virsh: only the shell and event" >&2; exit 1; }
answer() { printf '%s\n' "$1"; }
while IFS= read -r line; do
    printf 'virsh # %s\n' "$line"
    case $line in
    # As virsh's: no newline after it, and quotes joined away.
    "echo "*) printf '%s' "${line#echo }" | tr -d '"' ;;
    quit) exit 0 ;;
    domstate*)
        if [ -f "$FAKE/state" ]; then cat "$FAKE/state"; echo; else
            echo "error: failed to get domain 'vm'" >&2; fi ;;
    dumpxml*)
        [ -f "$FAKE/state" ] || { echo "error: failed to get domain 'vm'" >&2; continue; }
        [ -f "$FAKE/first_look" ] || date +%s.%N >"$FAKE/first_look"
        state=$(cat "$FAKE/channel")
        if [ -f "$FAKE/xml_after" ] && [ "$(echo "$(date +%s.%N) - $(cat "$FAKE/first_look") >= $(cat "$FAKE/xml_after")" | bc)" = 1 ]; then
            state=connected
        fi
        echo "<domain type='qemu'>"
        echo "  <devices>"
        echo "    <target dev='vda' bus='virtio'/>"
        if [ "$state" != none ]; then
            echo "    <channel type='unix'>"
            echo "      <target type='virtio' name='org.qemu.guest_agent.0' state='$state'/>"
            echo "    </channel>"
        fi
        echo "  </devices>"
        echo "</domain>" ;;
    qemu-agent-command*)
        json=${line##*"' '"}; json=${json%"'"}
        printf '%s\n' "$json" >>"$FAKE/commands"
        field() { printf '%s' "$json" | sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }
        case $(field execute) in
        guest-sync)
            if [ "$(cat "$FAKE/sync" 2>/dev/null)" = wrong ]; then answer '{"return":1234567890}'
            else answer "{\"return\":$(field id)}"; fi ;;
        guest-file-open)
            if [ "$(cat "$FAKE/open" 2>/dev/null)" = fail ]; then
                echo "error: internal error: unable to execute QEMU agent command 'guest-file-open': Failed to open file '$(field path)': No such file or directory" >&2
                continue
            fi
            [ "$(field mode)" = w+ ] && : >"$guest"
            answer '{"return":1000}' ;;
        guest-file-write)
            field buf-b64 | base64 -d >>"$guest"
            answer "{\"return\":{\"count\":$(field buf-b64 | base64 -d | wc -c),\"eof\":false}}" ;;
        guest-file-read)
            mode=$(cat "$FAKE/readback" 2>/dev/null)
            if [ "$mode" = cut ] || { [ "$mode" = cut-once ] && [ ! -f "$FAKE/cut-done" ]; }; then
                touch "$FAKE/cut-done"
                bytes=$(($(wc -c <"$guest") - 10))
                b64=$(head -c "$bytes" "$guest" | base64 -w 0)
            else
                bytes=$(wc -c <"$guest"); b64=$(base64 -w 0 <"$guest")
            fi
            answer "{\"return\":{\"count\":$bytes,\"buf-b64\":\"$b64\",\"eof\":true}}" ;;
        guest-file-close) answer '{"return":{}}' ;;
        *) echo "error: unknown command" >&2 ;;
        esac ;;
    *) echo "error: unknown command: '$line'" >&2 ;;
    esac
done
"#;

const CMDLINE: &str = "template=domP  type=secstorage\tname=s-1-VM authorized_key=c3NoLXJzYQ==";
/// What patch.sh's `echo $cmdline` makes of it.
const ECHOED: &str = "template=domP type=secstorage name=s-1-VM authorized_key=c3NoLXJzYQ==\n";

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    /// A running domain whose agent is connected.
    fn new() -> Self {
        let fake = Fake {
            dir: tempfile::tempdir().unwrap(),
        };
        let virsh = fake.virsh();
        fs::write(&virsh, FAKE_VIRSH).unwrap();
        fs::set_permissions(&virsh, fs::Permissions::from_mode(0o755)).unwrap();
        fake.set("state", "running");
        fake.set("channel", "connected");
        fake
    }

    fn virsh(&self) -> PathBuf {
        self.dir.path().join("virsh")
    }

    fn set(&self, knob: &str, value: &str) -> &Self {
        fs::write(self.dir.path().join(knob), value).unwrap();
        self
    }

    fn unset(&self, knob: &str) -> &Self {
        fs::remove_file(self.dir.path().join(knob)).unwrap();
        self
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn guest_file(&self) -> Option<String> {
        fs::read_to_string(self.dir.path().join("guest-file")).ok()
    }

    /// `send --guest-agent -n vm -c CMDLINE --virsh FAKE` plus `args`,
    /// under `timeout` so that a hang fails the test instead of blocking it.
    fn send(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_vport-bootargs"))
            .args(["send", "--guest-agent", "-n", "vm", "-c", CMDLINE])
            .arg("--virsh")
            .arg(self.virsh())
            .args(args)
            .output()
            .unwrap()
    }

    /// Processes started as virsh: (shells, event waiters).
    fn processes(&self) -> (usize, usize) {
        let calls = self.read("calls");
        let waiters = calls.lines().filter(|l| l.contains(" event ")).count();
        (calls.lines().count() - waiters, waiters)
    }

    /// How often qemu-ga was asked to run `command`.
    fn asked(&self, command: &str) -> usize {
        self.read("commands")
            .lines()
            .filter(|l| l.contains(&format!("\"execute\":\"{command}\"")))
            .count()
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited by a signal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit `code`, and stderr one error line holding `words`.
fn fails_in_one_line(out: &Output, want: i32, words: &str) {
    let err = stderr(out);
    assert_eq!(code(out), want, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("vport-bootargs: error: "), "{err}");
    assert!(lines[0].contains(words), "{err}");
}

/// Nothing written, and no more virsh processes than a delivery: the
/// waiter and the shell.
fn assert_no_write(fake: &Fake) {
    assert_eq!(fake.asked("guest-file-open"), 0);
    assert_eq!(fake.guest_file(), None);
    assert_eq!(fake.processes(), (1, 1));
}

#[test]
fn writes_what_patch_sh_echoes_and_confirms_it_with_one_shell_and_one_waiter() {
    let fake = Fake::new();
    let out = fake.send(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(fake.guest_file().as_deref(), Some(ECHOED));
    assert_eq!(fake.processes(), (1, 1));
    // One fresh sync, one write, one read-back.
    assert_eq!(fake.asked("guest-ping"), 0);
    assert_eq!(fake.asked("guest-sync"), 1);
    assert!(!fake.read("commands").contains("1234567890"));
    assert_eq!(fake.asked("guest-file-write"), 1);
    assert_eq!(fake.asked("guest-file-read"), 1);
    assert_eq!(fake.asked("guest-file-close"), 2);
    let opens: Vec<String> = fake
        .read("commands")
        .lines()
        .filter(|l| l.contains("guest-file-open"))
        .map(str::to_owned)
        .collect();
    assert!(opens[0].contains(r#""path":"/var/cache/cloud/cmdline","mode":"w+""#));
    assert!(opens[1].contains(r#""mode":"r""#));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "delivered {} bytes to vm:/var/cache/cloud/cmdline and read them back the same",
            ECHOED.len()
        )),
        "{err}"
    );
}

#[test]
fn write_and_close_reach_the_shell_together() {
    // guest-file-close follows guest-file-write with no answer read in
    // between: in the log of commands the shell ran they are neighbours,
    // and the binary sent them in one write (the fake reads line by line,
    // so order is all it can show; the VM suite measures the window).
    let fake = Fake::new();
    assert_eq!(code(&fake.send(&[])), 0);
    let commands = fake.read("commands");
    let lines: Vec<&str> = commands.lines().collect();
    let write = lines
        .iter()
        .position(|l| l.contains("guest-file-write"))
        .unwrap();
    assert!(lines[write + 1].contains("guest-file-close"), "{commands}");
}

#[test]
fn the_path_option_names_another_file_in_the_guest() {
    let fake = Fake::new();
    assert_eq!(code(&fake.send(&["--path", "/tmp/cmdline"])), 0);
    assert!(fake.read("commands").contains(r#""path":"/tmp/cmdline""#));
}

#[test]
fn an_agent_that_connects_later_is_waited_for_by_its_event() {
    // The XML never says connected: only the waiter's event can release it.
    let fake = Fake::new();
    fake.set("channel", "disconnected").set("event_after", "1");
    let out = fake.send(&["--wait-agent", "30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(fake.guest_file().as_deref(), Some(ECHOED));
    assert_eq!(fake.processes(), (1, 1));
}

#[test]
fn a_connect_the_waiter_missed_is_caught_by_the_xml_recheck() {
    // No event ever comes (a connect before `virsh event` registered), but
    // the XML says connected a moment later.
    let fake = Fake::new();
    fake.set("channel", "disconnected").set("xml_after", "0.5");
    let out = fake.send(&["--wait-agent", "30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(fake.guest_file().as_deref(), Some(ECHOED));
    assert_eq!(fake.processes(), (1, 1));
}

#[test]
fn an_agent_that_never_connects_is_one_line_and_exit_69_at_the_deadline() {
    let fake = Fake::new();
    fake.set("channel", "disconnected");
    let out = fake.send(&["--wait-agent", "1"]);
    fails_in_one_line(&out, 69, "did not connect within 1 s");
    assert_no_write(&fake);
    assert_eq!(fake.asked("guest-sync"), 0);
}

#[test]
fn a_stopped_domain_is_one_line_and_exit_68() {
    let fake = Fake::new();
    fake.set("state", "shut off");
    let out = fake.send(&[]);
    fails_in_one_line(&out, 68, "domain vm is not running");
    assert!(stderr(&out).contains("shut off"));
    assert_no_write(&fake);
}

#[test]
fn an_unknown_domain_is_one_line_and_exit_68() {
    let fake = Fake::new();
    fake.unset("state");
    let out = fake.send(&[]);
    fails_in_one_line(&out, 68, "failed to get domain");
    assert_no_write(&fake);
}

#[test]
fn a_domain_without_the_agent_channel_is_one_line_and_exit_78() {
    let fake = Fake::new();
    fake.set("channel", "none");
    let out = fake.send(&[]);
    fails_in_one_line(&out, 78, "has no guest agent channel");
    assert_no_write(&fake);
    assert_eq!(fake.asked("guest-sync"), 0);
}

#[test]
fn a_sync_answered_with_another_id_is_one_line_and_exit_76_before_any_write() {
    let fake = Fake::new();
    fake.set("sync", "wrong");
    let out = fake.send(&[]);
    fails_in_one_line(&out, 76, "guest-sync with id");
    assert_no_write(&fake);
}

#[test]
fn a_cut_read_back_is_written_again_and_then_confirmed() {
    let fake = Fake::new();
    fake.set("readback", "cut-once");
    let out = fake.send(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(fake.asked("guest-file-write"), 2);
    assert_eq!(fake.guest_file().as_deref(), Some(ECHOED));
    assert!(
        stderr(&out).contains("writing it again"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_read_back_that_always_differs_is_one_line_and_exit_73_after_three_writes() {
    let fake = Fake::new();
    fake.set("readback", "cut");
    let out = fake.send(&[]);
    assert_eq!(code(&out), 73, "{}", stderr(&out));
    let errors: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("vport-bootargs: error: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains(&format!(
            "read back {} bytes that differ from the {} written, after 3 write(s)",
            ECHOED.len() - 10,
            ECHOED.len()
        )),
        "{errors:?}"
    );
    assert_eq!(fake.asked("guest-file-write"), 3);
}

#[test]
fn a_file_qemu_ga_cannot_open_is_one_line_and_exit_74() {
    let fake = Fake::new();
    fake.set("open", "fail");
    let out = fake.send(&[]);
    fails_in_one_line(&out, 74, "No such file or directory");
    assert!(stderr(&out).contains("guest-file-open failed"));
}

#[test]
fn a_virsh_that_cannot_be_run_is_one_line_and_exit_74() {
    let out = Command::new(env!("CARGO_BIN_EXE_vport-bootargs"))
        .args(["send", "--guest-agent", "-n", "vm", "-c", "a=b"])
        .args(["--virsh", "/nonexistent/virsh"])
        .output()
        .unwrap();
    fails_in_one_line(&out, 74, "cannot run /nonexistent/virsh");
}

#[test]
fn patch_sh_arguments_are_refused_in_one_line_where_they_make_no_sense() {
    let bin = env!("CARGO_BIN_EXE_vport-bootargs");
    let run = |args: &[&str]| Command::new(bin).arg("send").args(args).output().unwrap();
    // No words in -c: nothing to write.
    let out = run(&["--guest-agent", "-n", "vm", "-c", " \t "]);
    fails_in_one_line(&out, 64, "-c CMDLINE is empty");
    // A name that cannot be quoted for virsh's shell.
    let out = run(&["--guest-agent", "-n", "v'm", "-c", "a=b"]);
    fails_in_one_line(&out, 64, "domain name");
    // -c is patch.sh's, so only with --guest-agent; -p is patchviasocket's.
    assert_eq!(code(&run(&["-n", "vm", "-c", "a=b"])), 64);
    assert_eq!(
        code(&run(&[
            "--guest-agent",
            "-n",
            "vm",
            "-c",
            "a=b",
            "-p",
            "a=b"
        ])),
        64
    );
    assert_eq!(code(&run(&["--guest-agent", "-n", "vm"])), 64);
}

#[test]
fn the_drop_in_wrapper_passes_patch_shs_arguments_through() {
    // docs/cloudstack-host.md's wrapper, as the agent runs patch.sh.
    let fake = Fake::new();
    let wrapper = fake.dir.path().join("patch.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} send --guest-agent --virsh {} \"$@\"\n",
            env!("CARGO_BIN_EXE_vport-bootargs"),
            fake.virsh().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&wrapper)
        .args(["-n", "vm", "-c", CMDLINE])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(fake.guest_file().as_deref(), Some(ECHOED));
}
