//! The NAT rules that send a pod's TCP traffic through meshd: the job of
//! Istio's `istio-iptables` (REDIRECT mode), run by an init container.
//!
//! The rules (spec §7.2), as an `iptables-restore` script for the `nat`
//! table:
//!
//! - **Inbound**: TCP arriving at the pod (`PREROUTING`) on the captured
//!   ports (`*`: every port but the excluded ones) is redirected to the
//!   inbound capture port (15006).
//! - **Outbound**: TCP the pod opens (`OUTPUT`) is redirected to the
//!   outbound capture port (15001), except: connections of the proxy's
//!   own UID/GID (so meshd's upstream connections never loop), connections
//!   to `127.0.0.1`, excluded ports and CIDRs, and the app's own loopback
//!   traffic. The proxy calling the pod's own IP over `lo` is sent to the
//!   inbound listener, as Istio does; `127.0.0.6` (the source meshd binds
//!   when forwarding inbound traffic to the app) is never captured.
//!
//! `meshd iptables` prints the script; with `--apply` it feeds it to
//! `iptables-restore --noflush` (and `ip6tables-restore` with `--ipv6`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// What to capture, with istio-iptables' defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// The UID meshd runs as (`-u`, default 1337).
    pub proxy_uid: u32,
    /// The GID meshd runs as (`-g`, default the UID).
    pub proxy_gid: u32,
    /// The outbound capture port (`-p`, default 15001).
    pub outbound_port: u16,
    /// The inbound capture port (`-z`, default 15006).
    pub inbound_port: u16,
    /// Inbound ports to capture; `None` for every port (`-b '*'`).
    pub inbound_ports: Option<Vec<u16>>,
    /// Inbound ports never captured (`-d`).
    pub inbound_exclude_ports: Vec<u16>,
    /// Outbound destination ports never captured (`-o`).
    pub outbound_exclude_ports: Vec<u16>,
    /// Outbound destination CIDRs never captured (`-x`).
    pub outbound_exclude_cidrs: Vec<ipnet::IpNet>,
}

/// Which address family a script is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {0}: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("{0} failed ({1}): {2}")]
    Failed(&'static str, std::process::ExitStatus, String),
}

// === impl CaptureRules ===

impl CaptureRules {
    /// The `iptables-restore` script for `family`.
    pub fn script(&self, family: Family) -> String {
        let (localhost, inbound_source) = match family {
            Family::V4 => ("127.0.0.1/32", "127.0.0.6/32"),
            Family::V6 => ("::1/128", "::6/128"),
        };
        let mut out = String::from("*nat\n");
        for chain in ["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"] {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let mut rule = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        rule(format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port));
        rule(format!("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_port));
        // Inbound.
        if self.inbound_ports.as_ref().map_or(true, |ports| !ports.is_empty()) {
            rule("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
        }
        match &self.inbound_ports {
            None => {
                for port in &self.inbound_exclude_ports {
                    rule(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
                }
                rule("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
            }
            Some(ports) => {
                for port in ports.iter().filter(|p| !self.inbound_exclude_ports.contains(p)) {
                    rule(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"));
                }
            }
        }
        // Outbound.
        rule("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
        rule(format!("-A ISTIO_OUTPUT -o lo -s {inbound_source} -j RETURN"));
        for (owner, id) in [("--uid-owner", self.proxy_uid), ("--gid-owner", self.proxy_gid)] {
            rule(format!("-A ISTIO_OUTPUT -o lo ! -d {localhost} -p tcp -m owner {owner} {id} -j ISTIO_IN_REDIRECT"));
            rule(format!("-A ISTIO_OUTPUT -o lo -m owner ! {owner} {id} -j RETURN"));
            rule(format!("-A ISTIO_OUTPUT -m owner {owner} {id} -j RETURN"));
        }
        for port in &self.outbound_exclude_ports {
            rule(format!("-A ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"));
        }
        let same_family = |net: &&ipnet::IpNet| {
            matches!((net, family), (ipnet::IpNet::V4(_), Family::V4) | (ipnet::IpNet::V6(_), Family::V6))
        };
        for net in self.outbound_exclude_cidrs.iter().filter(same_family) {
            rule(format!("-A ISTIO_OUTPUT -d {net} -j RETURN"));
        }
        rule(format!("-A ISTIO_OUTPUT -d {localhost} -j RETURN"));
        rule("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into());
        out.push_str("COMMIT\n");
        out
    }

    /// Installs the rules for `family` with `iptables-restore --noflush`
    /// (`ip6tables-restore` for IPv6).
    pub fn apply(&self, family: Family) -> Result<(), ApplyError> {
        let tool = match family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        };
        let mut child = Command::new(tool)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ApplyError::Spawn(tool, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.script(family).as_bytes()).map_err(|e| ApplyError::Spawn(tool, e))?;
        }
        let output = child.wait_with_output().map_err(|e| ApplyError::Spawn(tool, e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(ApplyError::Failed(tool, output.status, stderr));
        }
        Ok(())
    }
}

impl Default for CaptureRules {
    fn default() -> Self {
        CaptureRules {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            inbound_ports: None,
            inbound_exclude_ports: Vec::new(),
            outbound_exclude_ports: Vec::new(),
            outbound_exclude_cidrs: Vec::new(),
        }
    }
}

/// Parses istio-iptables' port list: `*` (every port: `None`), empty (no
/// port), or comma-separated numbers.
pub fn parse_ports(text: &str) -> Result<Option<Vec<u16>>, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(None);
    }
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().map_err(|_| format!("invalid port {p:?}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_istio_iptables() {
        let rules = CaptureRules { inbound_exclude_ports: vec![15090, 15021], ..CaptureRules::default() };
        let script = rules.script(Family::V4);
        let lines: Vec<&str> = script.lines().collect();
        for expected in [
            "*nat",
            ":ISTIO_INBOUND - [0:0]",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            "COMMIT",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{script}");
        }
        // The proxy's own traffic returns before the catch-all redirect.
        let owner = lines.iter().position(|l| *l == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        let redirect = lines.iter().position(|l| *l == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
        assert!(owner < redirect);
        // Exclusions come before the inbound catch-all.
        let excluded = lines.iter().position(|l| l.contains("--dport 15090 -j RETURN"));
        let captured = lines.iter().position(|l| *l == "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT");
        assert!(excluded < captured);
    }

    #[test]
    fn listed_ports_and_exclusions() {
        let rules = CaptureRules {
            inbound_ports: Some(vec![8080, 9090]),
            inbound_exclude_ports: vec![9090],
            outbound_exclude_ports: vec![5432],
            outbound_exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..CaptureRules::default()
        };
        let v4 = rules.script(Family::V4);
        assert!(v4.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT\n"));
        assert!(!v4.contains("--dport 9090"));
        assert!(v4.contains("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
        assert!(v4.contains("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN\n"));
        assert!(!v4.contains("fd00::/8"));
        let v6 = rules.script(Family::V6);
        assert!(v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j RETURN\n"));
        assert!(v6.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n"));
        assert!(v6.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_capture() {
        let rules = CaptureRules { inbound_ports: Some(Vec::new()), ..CaptureRules::default() };
        assert!(!rules.script(Family::V4).contains("PREROUTING"));
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_ports("*"), Ok(None));
        assert_eq!(parse_ports(""), Ok(Some(vec![])));
        assert_eq!(parse_ports("80, 443"), Ok(Some(vec![80, 443])));
        assert!(parse_ports("80,x").is_err());
    }
}
