//! `cell jail -- CMD`: the firewall without a VM.
//!
//! ```text
//!   host netns: cell-proxy ──(its own upstream connections)──► internet
//!                   │ listeners and nftables live in ▼
//!   cell-jail-<pid>-fw:  agent0 10.89.0.1   (no uplink; the default route points back at the agent)
//!                   │ veth
//!   cell-jail-<pid>-agent: eth0 10.89.0.2, default via the firewall, resolv.conf → 10.89.0.1
//!                   CMD runs here
//! ```
//!
//! The firewall namespace has no uplink: nothing the command sends can leave
//! except through the proxy's decisions. The isolation is weaker than the VM
//! (a shared kernel), the policy is the same. Everything created is removed
//! when the command exits, also on Ctrl-C or an error.
//!
//! Linux only: namespaces, veth pairs and nftables are Linux kernel features, and
//! the Linux side ([`linux`]) is the only module of the CLI that uses them. On
//! other systems the command exists (its `--help` too) and says to use the VM.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::run;

use std::path::PathBuf;

/// Exit status when the jail itself failed (the command's own status otherwise).
pub const JAIL_FAILED: u8 = 125;

const AFTER_HELP: &str = "\
Examples:
  cell jail --allow api.anthropic.com --allow '*.github.com' -- claude
  cell jail --policy policy.json --allow pypi.org -- pip install requests
  cell jail --allow-tcp github.com:22 -- git clone git@github.com:org/repo.git

  ANTHROPIC_API_KEY=sk-... cell jail --secret ANTHROPIC_API_KEY@api.anthropic.com -- claude
  cell jail --secret-cmd 'GH_TOKEN@api.github.com=gh auth token' -- gh pr list
  cell jail --spy run.jsonl --allow api.anthropic.com -- claude -p hi; cell spy --file run.jsonl
  cell jail --spy --keep --allow api.anthropic.com -- claude   (the store in the run directory)

  cell jail --allow-write ~/.cache/pip --deny-read .env -- pip install -r requirements.txt
  cell jail --allow-read ~/.kube/config --allow-tcp k8s.example.com:6443 -- kubectl get pods

The command sees only the firewall: DNS answers for allowed names, HTTPS to them
(intercepted with a per-run CA that is offered through SSL_CERT_FILE, NIX_SSL_CERT_FILE,
NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and GIT_SSL_CAINFO), and
the TCP ports you allowed. Anything else fails at once with a reason.
Exit status: the command's; 125 when the jail itself could not be set up.

Files: the command reads the host's files but writes only the current directory and a
private /tmp and /dev/shm (empty, gone at the end), and cannot read where credentials live:
~/.ssh, ~/.aws, ~/.config/gcloud, ~/.azure, ~/.kube, ~/.docker/config.json, ~/.netrc, ~/.gnupg,
~/.password-store, keyrings, browser profiles, shell histories, tokens of gh, git, npm, cargo,
pypi (docs/policy.md lists them), nor cell's run directory or spy store. /dev offers only null,
zero, full, random, urandom, tty and ptys. --allow-read, --allow-write and --deny-read PATH (and
the policy's `filesystem` section) change that: the most specific path wins, a flag beats a
default. A denied access fails with EACCES or EPERM; names in a denied directory can still be
listed. Enforced by Landlock (rules set in the child just before exec) and a private mount
namespace (the private /tmp; read-only binds where Landlock cannot say it); the command also
loses the capabilities that reach around them (modules, raw I/O, mounts, BPF, ptrace, mknod).
Whatever this kernel cannot enforce is said at the start, and so is whether denials can be
reported as `fs` events (that needs Landlock audit, Linux 6.15, with the kernel's audit on, read
as root); nothing unenforced is pretended.

What the jail protects: the network (only the firewall, as in the VM) and files (above).
What only the VM protects: the kernel itself (one kernel bug, or a root command's remaining
powers, reaches the host), the host's processes (visible in /proc; signals and ptrace are
refused), and on kernels before Linux 7.1 the host's UNIX sockets (D-Bus, docker, ssh-agent),
which Landlock cannot refuse there. For an agent that may try to escape, and on macOS, use
the VM (`cell`).

Root is not needed: as an ordinary user the jail makes a user namespace that owns both
network namespaces (you keep your uid inside; only the set-up tools and cell-proxy get
network capabilities there, the command none), and then requires Landlock, since the command
runs as the same user as cell-proxy. Where the machine turns unprivileged user namespaces off
(kernel.unprivileged_userns_clone, user.max_user_namespaces, Ubuntu's
kernel.apparmor_restrict_unprivileged_userns) the jail says which switch and the exact fix.
As root it uses named network namespaces (`ip netns`). Either way the command runs in a PID namespace
of its own: the daemons it starts end with it. Linux only (ip, nft, sysctl).

Secrets: with --secret ENV@HOST the command's ENV holds `cell-placeholder-<env>` (lowercase),
never the value; cell-proxy puts the value in its place in request headers to HOST only, which
is allowed for you. The value sent anywhere else, or echoed back by HOST, is blocked or replaced
(docs/secrets.md). In the jail the command runs as your user on your kernel: a command that is
root there can read cell's memory and environment, which hold the value. Against an agent that
might try, use the VM, where the value never enters the agent's machine.";

#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by the Linux side only
pub struct Args {
    /// Policy document (JSON, see docs/policy.md); --allow entries are added to it.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Allow HTTPS to HOST (`api.example.com` or `*.example.com`). Repeatable.
    #[arg(long = "allow", value_name = "HOST")]
    allow: Vec<String>,

    /// Allow plain TCP to HOST:PORT (`github.com:22`). Repeatable.
    #[arg(long = "allow-tcp", value_name = "HOST:PORT")]
    allow_tcp: Vec<String>,

    /// Resolver the proxy uses for allowed names (default: the host's resolv.conf). Repeatable.
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]")]
    dns_upstream: Vec<String>,

    /// Extra CA (PEM) the proxy trusts for upstream servers. Repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,

    /// The cell-proxy binary (default: next to this one, then $PATH).
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,

    /// A secret from cell's environment variable ENV, for HOST(s) only: the command gets the
    /// placeholder in ENV; the firewall swaps in the value (headers). Repeatable.
    #[arg(long = "secret", value_name = "ENV@HOST[,HOST…]")]
    secret: Vec<String>,

    /// A secret read from COMMAND's standard output (run with `sh -c`, before the jail starts),
    /// for HOST(s) only; the command gets the placeholder in ENV. Repeatable.
    #[arg(long = "secret-cmd", value_name = "ENV@HOST[,HOST…]=COMMAND")]
    secret_cmd: Vec<String>,

    /// Record every exchange with the allowed HTTPS hosts (--allow, --secret): a spy store
    /// (secrets redacted, bodies capped) read with `cell spy --file`. Into FILE, which outlives
    /// the jail; without FILE into the run directory (its path is printed at the start, for
    /// `cell spy -f --file`), removed at the end unless --keep.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    spy: Option<Option<PathBuf>>,

    /// Let the command read (and execute) PATH, also where a default denies it
    /// (`--allow-read ~/.ssh/known_hosts`). Repeatable.
    #[arg(long = "allow-read", value_name = "PATH")]
    allow_read: Vec<PathBuf>,

    /// Let the command read and write PATH (default: only the current directory and the
    /// private /tmp). Repeatable.
    #[arg(long = "allow-write", value_name = "PATH")]
    allow_write: Vec<PathBuf>,

    /// Refuse the command reading or writing PATH, also inside an allowed tree
    /// (`--deny-read .env`). Repeatable.
    #[arg(long = "deny-read", value_name = "PATH")]
    deny_read: Vec<PathBuf>,

    /// The jail's exec helper (internal): sets up the filesystem confinement
    /// described in SPEC, then executes the command.
    #[arg(long = "fs-exec", value_name = "SPEC", hide = true)]
    fs_exec: Option<PathBuf>,

    /// Keep the run directory (event log, CA, proxy log) and print where it is.
    #[arg(long)]
    keep: bool,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Off Linux there are no network namespaces: the VM (`cell`) is the way to
/// run a command behind the firewall.
#[cfg(not(target_os = "linux"))]
pub fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!(
        "this needs Linux network namespaces; on macOS use the VM (`cell`), \
         which enforces the same policy"
    )
}
