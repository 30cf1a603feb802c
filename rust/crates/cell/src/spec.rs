//! The VM spec: what the Nix layer builds for one VM and the host CLI boots.
//!
//! `lib.mkCell` writes one JSON file per VM (`cell-vm-firewall.json`,
//! `cell-vm-agent.json`, from the `cell.vm.spec` option); the hypervisor
//! backend turns it into a qemu or vfkit command line. Keeping the command
//! line on the Rust side means one build boots on either hypervisor, any
//! instance directory and any free port, and the invocation is covered by
//! golden tests instead of living in a generated shell script.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Firewall,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Firewall => "firewall",
            Role::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmSpec {
    pub version: u32,
    pub role: Role,
    /// The guest's Nix system: `x86_64-linux` or `aarch64-linux`.
    pub system: String,
    /// Uncompressed or bzImage kernel (vfkit needs it uncompressed).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel parameters (`init=/nix/store/…/init` and the rest), without a
    /// console: the backend adds the one its hypervisor provides.
    pub cmdline: Vec<String>,
    /// The read-only image of the VM's Nix store closure.
    #[serde(default)]
    pub store_disk: Option<PathBuf>,
    pub vcpu: u32,
    /// MiB.
    pub mem: u32,
    /// MAC of the private link's interface.
    pub link_mac: String,
    /// MAC of the firewall's uplink (user-mode NAT); `None` on the agent.
    #[serde(default)]
    pub uplink_mac: Option<String>,
    /// Writable disks, created sparse in the instance directory on first start.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Host directories shared into the VM (the agent's workspace).
    #[serde(default)]
    pub shares: Vec<Share>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    /// File name inside the instance directory.
    pub image: String,
    pub size_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Share {
    pub tag: String,
    /// `workspace`: the project directory given to `cell` (the only kind).
    pub source: String,
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A value safe to place inside a hypervisor's comma-separated option list.
fn plain(what: &str, s: &str) -> anyhow::Result<()> {
    if s.is_empty() || s.contains([',', '"', '\n', '=']) {
        bail!("{what} `{s}` is empty or contains `,`, `=`, `\"` or a newline");
    }
    Ok(())
}

impl VmSpec {
    pub fn load(path: &Path) -> anyhow::Result<VmSpec> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the VM spec {}; `cell provision` rebuilds it",
                path.display()
            )
        })?;
        let spec: VmSpec = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cell VM spec", path.display()))?;
        spec.check()
            .with_context(|| format!("{} is not a usable VM spec", path.display()))?;
        Ok(spec)
    }

    /// Refuses what would produce a broken or ambiguous command line.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.version != 1 {
            bail!(
                "spec version {} is not supported by this cell (1); update cell or the flake input so both match",
                self.version
            );
        }
        if !matches!(self.system.as_str(), "x86_64-linux" | "aarch64-linux") {
            bail!(
                "system `{}`: the guests are x86_64-linux or aarch64-linux",
                self.system
            );
        }
        for (what, p) in [("kernel", &self.kernel), ("initrd", &self.initrd)]
            .into_iter()
            .chain(self.store_disk.as_ref().map(|p| ("storeDisk", p)))
        {
            plain(what, &p.to_string_lossy())?;
            if !p.is_absolute() {
                bail!("{what} must be an absolute path, not {}", p.display());
            }
        }
        for arg in &self.cmdline {
            if arg.is_empty() || arg.contains(['"', '\n', ' ']) {
                bail!(
                    "kernel parameter {arg:?} is empty or contains a space, a quote or a newline"
                );
            }
        }
        if !is_mac(&self.link_mac) {
            bail!("linkMac `{}` is not a MAC address", self.link_mac);
        }
        match (&self.role, &self.uplink_mac) {
            (Role::Firewall, Some(m)) if is_mac(m) => {}
            (Role::Firewall, _) => bail!("the firewall needs an uplinkMac (a MAC address)"),
            (Role::Agent, Some(_)) => {
                bail!("the agent must not have an uplink: its only network is the private link")
            }
            (Role::Agent, None) => {}
        }
        if self.vcpu == 0 || self.mem < 128 {
            bail!("vcpu must be at least 1 and mem at least 128 MiB");
        }
        for v in &self.volumes {
            plain("volume image", &v.image)?;
            if v.image.contains('/') || v.image.starts_with('.') || v.size_mib == 0 {
                bail!(
                    "volume `{}` must be a plain file name in the instance directory with a size",
                    v.image
                );
            }
        }
        for s in &self.shares {
            plain("share tag", &s.tag)?;
            if s.source != "workspace" {
                bail!("share source `{}`: only `workspace` exists", s.source);
            }
        }
        Ok(())
    }

    /// Is the guest the host's own architecture (needed for KVM / vfkit)?
    pub fn native(&self) -> bool {
        self.system.starts_with(std::env::consts::ARCH)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn firewall() -> VmSpec {
        VmSpec {
            version: 1,
            role: Role::Firewall,
            system: "x86_64-linux".into(),
            kernel: "/nix/store/k-linux/bzImage".into(),
            initrd: "/nix/store/i-initrd/initrd".into(),
            cmdline: vec![
                "init=/nix/store/t-nixos-system-cell-firewall/init".into(),
                "loglevel=4".into(),
            ],
            store_disk: Some("/nix/store/s-store-disk.erofs".into()),
            vcpu: 1,
            mem: 512,
            link_mac: "02:ce:11:00:00:01".into(),
            uplink_mac: Some("02:ce:11:00:01:01".into()),
            volumes: vec![],
            shares: vec![],
        }
    }

    pub fn agent() -> VmSpec {
        VmSpec {
            role: Role::Agent,
            cmdline: vec!["init=/nix/store/u-nixos-system-cell-agent/init".into()],
            store_disk: Some("/nix/store/a-store-disk.erofs".into()),
            vcpu: 2,
            mem: 4096,
            link_mac: "02:ce:11:00:00:02".into(),
            uplink_mac: None,
            volumes: vec![Volume {
                image: "agent-var.img".into(),
                size_mib: 16384,
            }],
            shares: vec![Share {
                tag: "workspace".into(),
                source: "workspace".into(),
            }],
            ..firewall()
        }
    }

    #[test]
    fn good_specs_pass_and_round_trip() {
        for s in [firewall(), agent()] {
            s.check().unwrap();
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), s);
        }
    }

    #[test]
    fn broken_specs_are_refused_with_the_reason() {
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    uplink_mac: Some("02:ce:11:00:01:01".into()),
                    ..agent()
                },
                "only network is the private link",
            ),
            (
                VmSpec {
                    uplink_mac: None,
                    ..firewall()
                },
                "needs an uplinkMac",
            ),
            (
                VmSpec {
                    link_mac: "nope".into(),
                    ..firewall()
                },
                "not a MAC",
            ),
            (
                VmSpec {
                    kernel: "/nix/store/a,b".into(),
                    ..firewall()
                },
                "contains `,`",
            ),
            (
                VmSpec {
                    cmdline: vec!["a b".into()],
                    ..firewall()
                },
                "contains a space",
            ),
            (
                VmSpec {
                    version: 2,
                    ..firewall()
                },
                "not supported",
            ),
            (
                VmSpec {
                    volumes: vec![Volume {
                        image: "../x.img".into(),
                        size_mib: 1,
                    }],
                    ..agent()
                },
                "plain file name",
            ),
        ];
        for (spec, want) in cases {
            let e = spec.check().unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(firewall()).unwrap();
        v["tap"] = "tap0".into();
        assert!(serde_json::from_value::<VmSpec>(v).is_err());
    }
}
