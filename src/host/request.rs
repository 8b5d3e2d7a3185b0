//! What to send where: the caller's request (VM name or socket, cmdline,
//! key file) resolved and checked before anything is sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::files::{self, Refused};
use crate::wire::{check_cmdline, pubkey_line, Message, MAX_LINE, PUBKEY_PREFIX};

use super::session::{SendOptions, RETRY_INTERVAL};

/// Where to send: a VM's socket in a directory, or a socket path.
#[derive(Debug, Clone)]
pub enum Target {
    Vm { name: String, socket_dir: PathBuf },
    Socket(PathBuf),
}

/// What the caller asked for, before it is checked and resolved.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub target: Target,
    /// The cmdline as given; `%` stands for a space unless `raw`.
    pub cmdline: String,
    pub raw: bool,
    /// The public key file; None sends no `pubkey:` line.
    pub pubkey_file: Option<PathBuf>,
    pub wait_ack: Option<Duration>,
    /// Without `wait_ack`: how long to wait for QEMU to take the bytes.
    pub wait_taken: Duration,
}

/// Resolves a request: socket path, cmdline text, public key, all checked
/// before anything is sent.
pub fn resolve(req: &SendRequest) -> Result<SendOptions> {
    let socket = match &req.target {
        Target::Socket(path) => path.clone(),
        Target::Vm { name, socket_dir } => socket_for(socket_dir, name)?,
    };
    let cmdline = if req.raw {
        req.cmdline.clone()
    } else {
        spaces_for_percent(&req.cmdline)
    };
    check_cmdline(&cmdline).map_err(|problem| {
        let start: String = cmdline.chars().take(60).collect();
        let more = if start.len() < cmdline.len() {
            "..."
        } else {
            ""
        };
        Error::Usage(format!("-p/--cmdline {start:?}{more}: {problem}"))
    })?;
    let pubkey = match &req.pubkey_file {
        Some(path) => Some(read_pubkey(path)?),
        None => None,
    };
    Ok(SendOptions {
        socket,
        message: Message { cmdline, pubkey },
        wait_ack: req.wait_ack,
        wait_taken: req.wait_taken,
        retry: RETRY_INTERVAL,
    })
}

/// `<dir>/<vm>.agent`, the path CloudStack's libvirt XML binds QEMU to.
pub fn socket_for(dir: &Path, vm: &str) -> Result<PathBuf> {
    if vm.is_empty() || vm == "." || vm == ".." || vm.contains('/') {
        return Err(Error::Usage(format!(
            "-n/--name {vm:?} is not a VM name (empty, or a path); use --socket PATH for a path"
        )));
    }
    Ok(dir.join(format!("{vm}.agent")))
}

/// The Java side replaces spaces with `%` to pass the cmdline as one
/// argument; patchviasocket.py turns every `%` back into a space.
pub fn spaces_for_percent(text: &str) -> String {
    text.replace('%', " ")
}

/// The longest key the guest takes: its `pubkey:` line is at most
/// MAX_LINE bytes.
pub const MAX_PUBKEY: usize = MAX_LINE - PUBKEY_PREFIX.len();
/// How much of a key file is read: the longest key and some white space
/// around it. A larger file is refused unread.
const MAX_PUBKEY_FILE: usize = MAX_PUBKEY + 1024;

/// Reads the public key file: missing, unreadable or empty is EX_NOINPUT,
/// as patchviasocket.py refused to send without a key; a file holding
/// something else than one key, a private key, or a key longer than the
/// guest accepts is EX_DATAERR. Read only when it is a regular file (a FIFO
/// would block, /dev/zero never end), and at most MAX_PUBKEY_FILE bytes.
pub fn read_pubkey(path: &Path) -> Result<String> {
    let no_input = |problem: String| Error::NoInput {
        what: "public key file",
        path: path.to_owned(),
        problem,
    };
    let bad = |problem: String| Error::BadInput {
        what: "public key file",
        path: path.to_owned(),
        problem,
    };
    let bytes = files::read_regular(path, MAX_PUBKEY_FILE, true).map_err(|why| match why {
        Refused::Missing => no_input("does not exist; create it or pass --no-pubkey".into()),
        Refused::Io(_) => no_input(why.to_string()),
        Refused::TooLarge(_) => bad(format!(
            "is larger than {MAX_PUBKEY_FILE} bytes; the guest accepts a key of at most {MAX_PUBKEY} bytes"
        )),
        Refused::NotRegular(_) | Refused::Symlink => bad(why.to_string()),
    })?;
    // Before anything else: never send, nor quote, a private key.
    if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(bad(
            "is a private key; pass the public one (the .pub file next to it)".into(),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Err(no_input(
            "is empty; put the host's public key in it or pass --no-pubkey".into(),
        ));
    }
    let key = pubkey_line(&text).map_err(bad)?;
    if key.len() > MAX_PUBKEY {
        return Err(bad(format!(
            "holds a key of {} bytes; the guest accepts a key of at most {MAX_PUBKEY} bytes",
            key.len()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_becomes_space_as_in_patchviasocket() {
        assert_eq!(
            spaces_for_percent("type=secstorage%name=s-1-VM%%x"),
            "type=secstorage name=s-1-VM  x"
        );
    }

    #[test]
    fn key_over_the_guests_line_limit_or_private_is_refused_exit_65() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        let blob = "A".repeat(MAX_PUBKEY - "ssh-rsa ".len());
        std::fs::write(&path, format!("ssh-rsa {blob}\n")).unwrap();
        assert_eq!(read_pubkey(&path).unwrap().len(), MAX_PUBKEY);
        std::fs::write(&path, format!("ssh-rsa {blob}A\n")).unwrap();
        let err = read_pubkey(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("the guest accepts a key of at most"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::exit::DATA);
        std::fs::write(
            &path,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = read_pubkey(&path).unwrap_err();
        assert!(err.to_string().contains("is a private key"), "{err}");
        assert!(!err.to_string().contains("b3Blbn"), "{err}");
        assert_eq!(err.exit_code(), crate::error::exit::DATA);
    }

    #[test]
    fn socket_is_named_after_the_vm() {
        assert_eq!(
            socket_for(Path::new("/var/lib/libvirt/qemu"), "s-1-VM").unwrap(),
            Path::new("/var/lib/libvirt/qemu/s-1-VM.agent")
        );
        for bad in ["", ".", "..", "../etc/x", "a/b"] {
            assert!(
                matches!(socket_for(Path::new("/d"), bad), Err(Error::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
