//! Finding the port: which `vportNpM` carries the name we want.
//!
//! The kernel's virtio_console driver names device nodes `vport<dev>p<port>`
//! in probe order, which is not ABI; the port's name (the `name=` of QEMU's
//! virtserialport, e.g. `s-1-VM.vport`) is in
//! `<sysfs>/class/virtio-ports/vportNpM/name`. That file appears only once
//! the host has sent the name (a `change` uevent), so a port without it is
//! "not yet". udev's `/dev/virtio-ports/<name>` links are shown when present,
//! but the node read is always `<dev-root>/vportNpM`, which devtmpfs makes
//! without udev (early boot, initramfs).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::pattern::glob_match;
use crate::error::{Error, Result};
use crate::files::{self, Refused};

/// QEMU guest agent's port. Never opened: a second opener of a virtio port
/// gets EBUSY, and qemu-ga would then fail to start.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// How the port to read is chosen.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Glob on the whole port name, e.g. `*.vport`.
    pub pattern: String,
    /// When set, exactly this port name and nothing else.
    pub name: Option<String>,
    /// Accept a FIFO as the port's node (tests, a fake tree). Without it
    /// the node must be the character device sysfs names for the port.
    pub fifo_stand_in: bool,
}

impl Selector {
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("name {name}"),
            None => format!("pattern {}", self.pattern),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match &self.name {
            Some(n) => n == name,
            None => glob_match(&self.pattern, name),
        }
    }
}

/// One virtio port as sysfs and /dev show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The sysfs entry and device node name, e.g. `vport0p1`.
    pub entry: String,
    /// The port name, or None while the host has not sent it.
    pub name: Option<String>,
    /// major:minor from sysfs `dev`.
    pub dev: Option<(u32, u32)>,
    /// The node to open: `<dev-root>/<entry>`.
    pub node: PathBuf,
    /// udev's `<dev-root>/virtio-ports/<name>`, when it exists.
    pub link: Option<PathBuf>,
    pub verdict: Verdict,
    /// A FIFO may stand in for the node ([`Selector::fifo_stand_in`]).
    pub fifo_stand_in: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Chosen,
    /// Matches, but another matching port came first.
    AlsoMatches {
        chosen: String,
    },
    GuestAgent,
    NoName,
    NoMatch,
    /// Its `name` or `dev` attribute could not be read; why.
    Unreadable(String),
}

impl Verdict {
    pub fn describe(&self) -> String {
        match self {
            Verdict::Chosen => "chosen".into(),
            Verdict::AlsoMatches { chosen } => {
                format!("ignored: matches too, but {chosen} comes first")
            }
            Verdict::GuestAgent => "ignored: QEMU guest agent's port, never opened".into(),
            Verdict::NoName => "ignored: no name yet".into(),
            Verdict::NoMatch => "ignored: name does not match".into(),
            Verdict::Unreadable(why) => format!("ignored: {why}"),
        }
    }
}

/// Every port under `<sysfs>/class/virtio-ports`, in device then port
/// number order, each with its verdict for `sel`. A missing class directory
/// (no virtio_console loaded yet) is an empty list; a missing sysfs root is
/// an error (a mistyped `--sysfs-root` would otherwise look like "no ports").
/// Entries not named `vport<N>p<M>` are not ports and are left out. A port
/// whose attributes cannot be read is listed as ignored, with the reason,
/// and the others are still found.
pub fn scan(sysfs_root: &Path, dev_root: &Path, sel: &Selector) -> io::Result<Vec<Port>> {
    let class = sysfs_root.join("class/virtio-ports");
    let entries = match fs::read_dir(&class) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match fs::metadata(sysfs_root) {
                Ok(m) if m.is_dir() => Ok(Vec::new()),
                _ => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the sysfs root {} is not a directory", sysfs_root.display()),
                )),
            };
        }
        Err(e) => return Err(e),
    };
    let mut ports = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(entry_name) = entry
            .file_name()
            .into_string()
            .ok()
            .filter(|n| is_port_entry(n))
        else {
            continue;
        };
        let dir = class.join(&entry_name);
        let attrs = read_attr(&dir, "name").and_then(|name| Ok((name, read_attr(&dir, "dev")?)));
        let (name, dev, verdict) = match attrs {
            Ok((name, dev)) => (
                name.filter(|n| !n.is_empty()),
                dev.and_then(|d| parse_dev(&d)),
                Verdict::NoMatch,
            ),
            Err(why) => (None, None, Verdict::Unreadable(why)),
        };
        let link = name
            .as_ref()
            .map(|n| dev_root.join("virtio-ports").join(n))
            .filter(|l| l.symlink_metadata().is_ok());
        ports.push(Port {
            node: dev_root.join(&entry_name),
            entry: entry_name,
            name,
            dev,
            link,
            verdict,
            fifo_stand_in: sel.fifo_stand_in,
        });
    }
    ports.sort_by_key(|p| sort_key(&p.entry));
    classify(&mut ports, sel);
    Ok(ports)
}

/// `vport<N>p<M>`, N and M decimal: the only names virtio_console gives its
/// ports (`vport%up%u` in add_port()).
pub fn is_port_entry(entry: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    entry
        .strip_prefix("vport")
        .and_then(|rest| rest.split_once('p'))
        .is_some_and(|(d, p)| digits(d) && digits(p))
}

/// Sets each port's verdict. The first matching port in `vport<dev>p<port>`
/// numeric order is chosen: deterministic, and the order QEMU gives ports
/// that are declared in that order.
pub fn classify(ports: &mut [Port], sel: &Selector) {
    let mut chosen: Option<String> = None;
    for port in ports.iter_mut() {
        if matches!(port.verdict, Verdict::Unreadable(_)) {
            continue;
        }
        port.verdict = match port.name.as_deref() {
            None => Verdict::NoName,
            Some(GUEST_AGENT_PORT) => Verdict::GuestAgent,
            Some(name) if sel.matches(name) => match &chosen {
                Some(first) => Verdict::AlsoMatches {
                    chosen: first.clone(),
                },
                None => {
                    chosen = Some(port.entry.clone());
                    Verdict::Chosen
                }
            },
            Some(_) => Verdict::NoMatch,
        };
    }
}

pub fn chosen(ports: &[Port]) -> Option<&Port> {
    ports.iter().find(|p| p.verdict == Verdict::Chosen)
}

/// Longest sysfs attribute: the kernel gives show() one page.
const ATTR_MAX: usize = 4096;

/// Reads the one-line sysfs attribute `dir/attr`; None when it does not
/// exist; why not, when it is not a readable attribute (a FIFO would block,
/// a link to /dev/zero never end).
pub fn read_attr(dir: &Path, attr: &str) -> Result<Option<String>, String> {
    let bytes = match files::read_regular(&dir.join(attr), ATTR_MAX, false) {
        Ok(b) => b,
        Err(Refused::Missing) => return Ok(None),
        Err(why) => return Err(format!("its {attr} attribute {why}")),
    };
    let text = String::from_utf8(bytes).map_err(|_| format!("its {attr} is not UTF-8"))?;
    Ok(Some(text.trim_end_matches('\n').to_owned()))
}

/// The node to open is not a character device: refused, unless a FIFO may
/// stand in for it. Production nodes are devtmpfs character devices; a FIFO,
/// or a link to a regular file, is something planted.
pub fn check_stand_in(port: &Port, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if port.fifo_stand_in && meta.file_type().is_fifo() {
        return Ok(());
    }
    Err(Error::Unavailable(format!(
        "{} is {}, not the character device of port {}; refusing to open it{}",
        port.node.display(),
        files::kind(&meta.file_type()),
        port.name.as_deref().unwrap_or("?"),
        if meta.file_type().is_fifo() {
            " (--fifo-stand-in accepts a FIFO, for tests)"
        } else {
            ""
        }
    )))
}

/// `MAJOR:MINOR` as sysfs writes it.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `vport3p12` sorts as (3, 12, name); anything else after all of those.
fn sort_key(entry: &str) -> (u64, u64, String) {
    let numbers = entry
        .strip_prefix("vport")
        .and_then(|rest| rest.split_once('p'))
        .and_then(|(d, p)| Some((d.parse().ok()?, p.parse().ok()?)));
    let (d, p) = numbers.unwrap_or((u64::MAX, u64::MAX));
    (d, p, entry.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(entry: &str, name: Option<&str>) -> Port {
        Port {
            entry: entry.into(),
            name: name.map(Into::into),
            dev: None,
            node: PathBuf::from("/dev").join(entry),
            link: None,
            verdict: Verdict::NoMatch,
            fifo_stand_in: false,
        }
    }

    fn vport() -> Selector {
        Selector {
            pattern: "*.vport".into(),
            name: None,
            fifo_stand_in: false,
        }
    }

    #[test]
    fn guest_agent_is_never_chosen_even_by_pattern() {
        let mut ports = vec![port("vport0p1", Some(GUEST_AGENT_PORT))];
        let sel = Selector {
            pattern: "*".into(),
            name: None,
            fifo_stand_in: false,
        };
        classify(&mut ports, &sel);
        assert_eq!(ports[0].verdict, Verdict::GuestAgent);
        assert!(chosen(&ports).is_none());
    }

    #[test]
    fn first_match_in_numeric_order_is_chosen() {
        let mut ports = vec![
            port("vport0p2", Some("b.vport")),
            port("vport0p10", Some("c.vport")),
            port("vport0p1", Some("x")),
        ];
        ports.sort_by_key(|p| sort_key(&p.entry));
        classify(&mut ports, &vport());
        assert_eq!(chosen(&ports).unwrap().entry, "vport0p2");
        assert_eq!(
            ports[2].verdict,
            Verdict::AlsoMatches {
                chosen: "vport0p2".into()
            }
        );
    }

    #[test]
    fn name_selects_exactly() {
        let mut ports = vec![
            port("vport0p1", Some("a.vport")),
            port("vport0p2", Some("b.vport")),
            port("vport0p3", None),
        ];
        let sel = Selector {
            pattern: "*.vport".into(),
            name: Some("b.vport".into()),
            fifo_stand_in: false,
        };
        classify(&mut ports, &sel);
        assert_eq!(chosen(&ports).unwrap().entry, "vport0p2");
        assert_eq!(ports[0].verdict, Verdict::NoMatch);
        assert_eq!(ports[2].verdict, Verdict::NoName);
    }

    #[test]
    fn only_vport_n_p_m_entries_are_ports() {
        for good in ["vport0p1", "vport1p12", "vport10p0"] {
            assert!(is_port_entry(good), "{good}");
        }
        for bad in [
            "vport0p",
            "vportp1",
            "vportXpY",
            "vport+1p1",
            "zzz",
            "vport0p1x",
            "",
        ] {
            assert!(!is_port_entry(bad), "{bad}");
        }
    }

    #[test]
    fn dev_attribute_parses() {
        assert_eq!(parse_dev("251:1\n"), Some((251, 1)));
        assert_eq!(parse_dev("251"), None);
    }
}
