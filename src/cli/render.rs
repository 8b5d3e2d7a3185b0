//! Printing results: the `ports` table and its JSON form.

use std::io::{self, Write};

use crate::guest::cmdline::json_string;
use crate::guest::ports::{self, Port};

fn dev_string(p: &Port) -> String {
    p.dev
        .map(|(a, b)| format!("{a}:{b}"))
        .unwrap_or_else(|| "-".into())
}

/// `ports`: one row per port, the chosen one marked.
pub fn write_ports_table(out: &mut impl Write, found: &[Port]) -> io::Result<()> {
    if found.is_empty() {
        return writeln!(out, "no virtio ports");
    }
    writeln!(
        out,
        "{:<10} {:<16} {:<8} {:<28} VERDICT",
        "PORT", "NODE", "DEV", "NAME"
    )?;
    for p in found {
        writeln!(
            out,
            "{:<10} {:<16} {:<8} {:<28} {}",
            p.entry,
            p.node.display(),
            dev_string(p),
            p.name.as_deref().unwrap_or("-"),
            p.verdict.describe()
        )?;
    }
    Ok(())
}

/// `ports --json`: an array of objects with the same facts as the table.
pub fn write_ports_json(out: &mut impl Write, found: &[Port]) -> io::Result<()> {
    let s = json_string;
    let opt = |v: Option<String>| v.map(|v| s(&v)).unwrap_or_else(|| "null".into());
    let rows: Vec<String> = found
        .iter()
        .map(|p| {
            format!(
                "{{\"port\":{},\"node\":{},\"dev\":{},\"name\":{},\"link\":{},\"chosen\":{},\"verdict\":{}}}",
                s(&p.entry),
                s(&p.node.to_string_lossy()),
                opt(p.dev.map(|(a, b)| format!("{a}:{b}"))),
                opt(p.name.clone()),
                opt(p.link.as_ref().map(|l| l.to_string_lossy().into_owned())),
                p.verdict == ports::Verdict::Chosen,
                s(&p.verdict.describe()),
            )
        })
        .collect();
    writeln!(out, "[{}]", rows.join(","))
}
