//! `vm-inventory.md` (docs/watcher-service.md): Markdown pipe tables whose columns are found by header name
//! (case-insensitive): `VM`/`Name`, `OS`, `IP`/`Address`, optional `Aliases`. A VM belongs to a
//! run when its OS or one of its aliases is a `-`-separated token of the build name.

use crate::build_name::BuildName;
use crate::error::{Error, Result};
use std::fs;
use std::io;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub os: Option<String>,
    pub address: Option<String>,
    pub aliases: Vec<String>,
}

#[derive(Default)]
struct Columns {
    name: Option<usize>,
    os: Option<usize>,
    address: Option<usize>,
    aliases: Option<usize>,
}

fn cells(line: &str) -> Option<Vec<String>> {
    let t = line.trim();
    let inner = t.strip_prefix('|')?;
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    Some(
        inner
            .split('|')
            .map(|c| {
                c.trim()
                    .trim_matches('`')
                    .trim_matches('*')
                    .trim()
                    .to_string()
            })
            .collect(),
    )
}

fn is_separator(cells: &[String]) -> bool {
    !cells.is_empty()
        && cells
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

fn columns(header: &[String]) -> Columns {
    let mut cols = Columns::default();
    for (i, h) in header.iter().enumerate() {
        match h.to_ascii_lowercase().as_str() {
            "vm" | "name" | "vm name" => cols.name = cols.name.or(Some(i)),
            "os" => cols.os = cols.os.or(Some(i)),
            "ip" | "address" | "ip address" => cols.address = cols.address.or(Some(i)),
            "aliases" | "alias" => cols.aliases = cols.aliases.or(Some(i)),
            _ => {}
        }
    }
    cols
}

/// Every VM row of every table that has at least a name column.
pub fn parse(text: &str) -> Vec<Vm> {
    let lines: Vec<&str> = text.lines().collect();
    let mut vms = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let (Some(header), Some(sep)) = (cells(lines[i]), cells(lines[i + 1])) else {
            i += 1;
            continue;
        };
        if !is_separator(&sep) {
            i += 1;
            continue;
        }
        let cols = columns(&header);
        i += 2;
        while let Some(row) = lines.get(i).and_then(|l| cells(l)) {
            i += 1;
            let get = |c: Option<usize>| {
                c.and_then(|c| row.get(c))
                    .filter(|v| !v.is_empty())
                    .cloned()
            };
            let Some(name) = get(cols.name) else { continue };
            let aliases = get(cols.aliases)
                .map(|a| {
                    a.split([',', ' ', ';'])
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            vms.push(Vm {
                name,
                os: get(cols.os),
                address: get(cols.address),
                aliases,
            });
        }
    }
    vms
}

/// The inventory at `path`, or `None` when there is no such file.
pub fn load(path: &Path) -> Result<Option<Vec<Vm>>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read inventory", path, e)),
    }
}

/// VMs whose OS or an alias is a token of the build name, in inventory order.
pub fn for_build<'a>(vms: &'a [Vm], build: &BuildName) -> Vec<&'a Vm> {
    let tokens: Vec<String> = build.tokens().map(str::to_ascii_lowercase).collect();
    let is_token = |s: &str| tokens.iter().any(|t| t.eq_ignore_ascii_case(s));
    vms.iter()
        .filter(|vm| {
            vm.os.as_deref().is_some_and(is_token) || vm.aliases.iter().any(|a| is_token(a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Controller VMs\n\nSome prose | with a pipe.\n\n| Name | ip | OS | Aliases |\n|:---|---|---|---|\n| `rh96-01` | 192.0.2.11 | redhat9.6 | rhel9.6, rh96 |\n| ub-01 | 192.0.2.12 | ubuntu24.04 | |\n| win-01 | 192.0.2.13 | windows2025 | w2k25 |\n\n| VM | OS |\n|---|---|\n| fc-01 | fc |\n";

    #[test]
    fn the_example_inventory_lists_no_vm_for_fibre_channel() {
        // `fc` in the operators' build names is Fibre Channel, not Fedora.
        let example = include_str!("../../inventory/vm-inventory.md");
        let vms = parse(example);
        let build = BuildName::parse("e2e-redhat9.6-ubuntu24.04-w2k25-fc").expect("valid");
        let names: Vec<&str> = for_build(&vms, &build)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["atvm-rh96-01", "atvm-ub2404-01", "atvm-w2k25-01"]);
    }

    #[test]
    fn columns_by_header_name_in_any_order() {
        let vms = parse(TEXT);
        assert_eq!(vms.len(), 4);
        assert_eq!(
            vms[0],
            Vm {
                name: "rh96-01".into(),
                os: Some("redhat9.6".into()),
                address: Some("192.0.2.11".into()),
                aliases: vec!["rhel9.6".into(), "rh96".into()],
            }
        );
        assert!(vms[1].aliases.is_empty());
        assert_eq!(vms[3].address, None);
    }

    #[test]
    fn vms_match_by_os_or_alias_token() {
        let vms = parse(TEXT);
        let b = BuildName::parse("e2e-redhat9.6-ubuntu24.04-w2k25-fc").expect("valid");
        let names: Vec<&str> = for_build(&vms, &b)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["rh96-01", "ub-01", "win-01", "fc-01"]);
        let b = BuildName::parse("e2e-ubuntu24.04x").expect("valid");
        assert!(for_build(&vms, &b).is_empty());
    }
}
