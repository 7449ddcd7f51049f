//! The OCI runtime spec (`config.json` of a bundle) for running an image, from its config.

use std::path::{Path, PathBuf};

use ociup_core::config::Config;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::path;

/// The PATH a container gets when the image sets none (as Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a container gets: the default set of containerd and Docker.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths of /proc and /sys hidden from the container (runc's and containerd's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of /proc mounted read-only (runc's and containerd's defaults).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The network a container gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// Its own network namespace with nothing in it but a loopback device: no network.
    #[default]
    None,
    /// The host's network (no network namespace; the host's /etc/resolv.conf and /etc/hosts
    /// are bound read-only).
    Host,
}

/// A host path bound into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// Where in the container (absolute).
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
}

impl std::str::FromStr for BindMount {
    type Err = Error;

    /// `SRC:DEST[:ro|rw]`; SRC is made absolute against the working directory.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidImage {
            reason: format!("--mount {s:?}: {why} (expected SRC:DEST[:ro])"),
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dest, read_only) = match parts.as_slice() {
            [src, dest] => (*src, *dest, false),
            [src, dest, "ro"] => (*src, *dest, true),
            [src, dest, "rw"] => (*src, *dest, false),
            [_, _, other] => return Err(bad(&format!("unknown option {other:?}"))),
            _ => return Err(bad("one or two colons")),
        };
        if src.is_empty() || !dest.starts_with('/') {
            return Err(bad("SRC must be given and DEST absolute"));
        }
        if has_dotdot(dest) {
            return Err(bad("DEST must not hold `..`"));
        }
        let source = std::path::absolute(src)
            .map_err(|e| Error::io(format!("--mount: resolving {src}"), e))?;
        Ok(BindMount {
            source,
            destination: dest.to_owned(),
            read_only,
        })
    }
}

/// Whether a path inside the container has a `..` component (refused in mount destinations and
/// working directories: they are looked up in the shared snapshot).
fn has_dotdot(p: &str) -> bool {
    p.split('/').any(|c| c == "..")
}

/// One range of a user-namespace mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// How many.
    pub size: u32,
}

/// The user namespace of a rootless container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rootless {
    /// uid mappings: the caller as root, then the caller's /etc/subuid range from 1.
    pub uid_mappings: Vec<IdMapping>,
    /// gid mappings, likewise from /etc/subgid.
    pub gid_mappings: Vec<IdMapping>,
}

impl Rootless {
    /// The mappings for the caller (`uid`, `gid`, user `name`): the caller is root in the
    /// container; ids from 1 come from the caller's first range in `subuid` and `subgid` (the
    /// contents of /etc/subuid and /etc/subgid, `name:start:count` or `uid:start:count` lines),
    /// when there is one (runc then needs newuidmap and newgidmap).
    pub fn for_caller(uid: u32, gid: u32, name: Option<&str>, subuid: &str, subgid: &str) -> Self {
        let range = |text: &str, id: u32| {
            text.lines().find_map(|l| {
                let mut f = l.trim().split(':');
                let (who, start, count) = (f.next()?, f.next()?, f.next()?);
                let mine = who == id.to_string() || Some(who) == name;
                let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
                (mine && count > 0).then_some(IdMapping {
                    container_id: 1,
                    host_id: start,
                    size: count,
                })
            })
        };
        let map = |id: u32, text: &str| {
            let mut v = vec![IdMapping {
                container_id: 0,
                host_id: id,
                size: 1,
            }];
            v.extend(range(text, id));
            v
        };
        Rootless {
            uid_mappings: map(uid, subuid),
            gid_mappings: map(gid, subgid),
        }
    }
}

/// The seccomp filter of a container.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Seccomp {
    /// The default profile ([`crate::seccomp::default_profile`] for the container's
    /// capabilities and this machine's architecture), as containerd and Docker apply.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// This `linux.seccomp` object of the OCI runtime spec, as given.
    Profile(Value),
}

impl Seccomp {
    /// A profile read from a JSON file: an OCI runtime spec `linux.seccomp` object
    /// (`defaultAction`, optional `architectures`, `syscalls`, ...).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::InvalidImage`] when it is not such
    /// an object (Docker's profile format, with `archMap` or `includes`, is refused: its rules
    /// depend on what Docker resolves first).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading the seccomp profile {}", path.display()), e))?;
        let bad = |why: String| Error::InvalidImage {
            reason: format!("the seccomp profile {}: {why}", path.display()),
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if !v.get("defaultAction").is_some_and(Value::is_string) {
            return Err(bad(
                "no \"defaultAction\": expected the linux.seccomp object of an OCI runtime spec"
                    .into(),
            ));
        }
        let docker = v.get("archMap").is_some()
            || v["syscalls"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|r| r.get("includes").is_some() || r.get("excludes").is_some())
            });
        if docker {
            return Err(bad(
                "a Docker profile (archMap, includes, excludes): give the linux.seccomp object \
                 of an OCI runtime spec instead"
                    .into(),
            ));
        }
        Ok(Seccomp::Profile(v))
    }
}

/// What to run and how, beyond what the image config says.
#[derive(Clone, Debug, Default)]
pub struct SpecOptions {
    /// Arguments: when not empty they replace the image's Cmd (as `docker run IMAGE ARGS`).
    pub args: Vec<String>,
    /// Replaces the image's Entrypoint (and drops its Cmd, as Docker does).
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables set over the image's Env, in order.
    pub env: Vec<(String, String)>,
    /// The working directory (default: the image's WorkingDir, else `/`).
    pub workdir: Option<String>,
    /// The user (`name`, `uid`, `name:group`, `uid:gid`; default: the image's User, else root).
    pub user: Option<String>,
    /// Give the process a terminal.
    pub terminal: bool,
    /// Host paths bound in.
    pub mounts: Vec<BindMount>,
    /// The network.
    pub network: Network,
    /// Mount the root file system read-only (with tmpfs at /tmp, /var/tmp and /run).
    pub readonly_rootfs: bool,
    /// The container's host name.
    pub hostname: String,
    /// Set for a rootless container: its user namespace.
    pub rootless: Option<Rootless>,
    /// The seccomp filter (default: the default profile).
    pub seccomp: Seccomp,
}

/// The user a process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups (those of /etc/group listing the user, when no group was given).
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd (`/` when unknown).
    pub home: String,
}

/// The most of /etc/passwd and /etc/group read.
const ID_FILE_LIMIT: u64 = 4 << 20;

/// Resolves `user` (`""`, `name`, `uid`, `name:group`, `uid:gid`, any mix) with the
/// /etc/passwd and /etc/group of `rootfs`, read inside it (a symlink there cannot point at the
/// host's files). A number not in /etc/passwd is taken as is, with gid 0.
///
/// # Errors
/// [`Error::InvalidImage`] for a name the image does not know.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser> {
    let read = |name: &str| -> Result<String> {
        let bytes = path::read_in_root(rootfs, name, ID_FILE_LIMIT)
            .map_err(|e| Error::io(format!("reading {name} of the image"), e))?;
        Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
    };
    let passwd = read("/etc/passwd")?;
    // name:x:uid:gid:gecos:home:shell
    let users: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(n) => users.iter().find(|f| f[2].parse::<u32>().ok() == Some(n)),
        Err(_) => Some(
            users
                .iter()
                .find(|f| f[0] == u)
                .ok_or_else(|| Error::InvalidImage {
                    reason: format!("user {u:?} is not in the image's /etc/passwd"),
                })?,
        ),
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| Error::InvalidImage {
                reason: format!("user {u:?} has no numeric uid in the image's /etc/passwd"),
            })?,
    };
    let home = entry
        .and_then(|f| f.get(5))
        .filter(|h| !h.is_empty())
        .map_or_else(|| "/".to_owned(), |h| (*h).to_owned());
    let primary = entry.and_then(|f| f[3].parse::<u32>().ok()).unwrap_or(0);
    let group_file = read("/etc/group")?;
    // name:x:gid:members
    let groups: Vec<Vec<&str>> = group_file
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let (gid, additional_gids) = match g {
        Some(g) if !g.is_empty() => {
            let gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .iter()
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| Error::InvalidImage {
                        reason: format!("group {g:?} is not in the image's /etc/group"),
                    })?,
            };
            (gid, Vec::new())
        }
        _ => {
            let name = entry.map(|f| f[0]);
            let mut extra: Vec<u32> = groups
                .iter()
                .filter(|f| {
                    name.is_some_and(|n| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
                })
                .filter_map(|f| f[2].parse().ok())
                .filter(|g| *g != primary)
                .collect();
            extra.sort_unstable();
            extra.dedup();
            (primary, extra)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// The image config's `config` object field `key`.
fn field<'a>(config: &'a Config, key: &str) -> Option<&'a Value> {
    config
        .value()
        .get("config")
        .and_then(|c| c.get(key))
        .filter(|v| !v.is_null())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The process arguments: the entrypoint (`--entrypoint` or the image's) then the arguments
/// given (or, without any, the image's Cmd, unless the entrypoint was replaced).
///
/// # Errors
/// [`Error::InvalidImage`] when that leaves nothing to run.
pub fn process_args(config: &Config, options: &SpecOptions) -> Result<Vec<String>> {
    let mut args = match &options.entrypoint {
        Some(e) => e.clone(),
        None => strings(field(config, "Entrypoint")),
    };
    if !options.args.is_empty() {
        args.extend(options.args.iter().cloned());
    } else if options.entrypoint.is_none() {
        args.extend(strings(field(config, "Cmd")));
    }
    if args.is_empty() {
        return Err(Error::InvalidImage {
            reason: "the image has no Entrypoint or Cmd: give the command to run after --".into(),
        });
    }
    Ok(args)
}

/// The OCI runtime spec (runtime-spec 1.0.2) that runs `config`'s image from the root file
/// system at `root_path` (as written into the spec: absolute, or relative to the bundle);
/// `rootfs` is where ociup reads the image's /etc/passwd and /etc/group.
///
/// The process: Entrypoint + Cmd (see [`process_args`]), the image's Env with
/// [`SpecOptions::env`] over it (PATH defaults to [`DEFAULT_PATH`], HOME to the user's home,
/// TERM to `xterm` with a terminal), WorkingDir (`/` when unset), User resolved with
/// [`resolve_user`], no new privileges, the capabilities [`DEFAULT_CAPABILITIES`] (bounding,
/// effective and permitted; none inheritable or ambient). Mounts: /proc, /dev (tmpfs),
/// /dev/pts, /dev/shm, /dev/mqueue, /sys read-only (bound from the host when rootless),
/// /sys/fs/cgroup read-only (not rootless), a tmpfs at /tmp, and with a read-only root also at
/// /var/tmp and /run; then the binds. Namespaces: pid, ipc, uts, mount, cgroup, network
/// (unless [`Network::Host`]), user (rootless, with its mappings). Devices: none beyond the
/// runtime's defaults (null, zero, full, random, urandom, tty). Seccomp: as
/// [`SpecOptions::seccomp`] says, by default [`crate::seccomp::default_profile`] (everything
/// not allowed fails with `EPERM`).
///
/// # Errors
/// As [`process_args`] and [`resolve_user`].
pub fn runtime_spec(
    config: &Config,
    rootfs: &Path,
    root_path: &str,
    options: &SpecOptions,
) -> Result<Value> {
    let args = process_args(config, options)?;
    let user_text = options
        .user
        .clone()
        .or_else(|| {
            field(config, "User")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let user = resolve_user(rootfs, &user_text)?;
    let mut env: Vec<(String, String)> = strings(field(config, "Env"))
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv, String::new()),
        })
        .collect();
    let mut set = |k: &str, v: &str, replace: bool| match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) if replace => slot.1 = v.to_owned(),
        Some(_) => {}
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for (k, v) in &options.env {
        set(k, v, true);
    }
    set("PATH", DEFAULT_PATH, false);
    set("HOME", &user.home, false);
    if options.terminal {
        set("TERM", "xterm", false);
    }
    let cwd = options
        .workdir
        .clone()
        .or_else(|| {
            field(config, "WorkingDir")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::InvalidImage {
            reason: format!("the working directory {cwd:?} is not absolute"),
        });
    }
    if has_dotdot(&cwd) {
        return Err(Error::InvalidImage {
            reason: format!("the working directory {cwd:?} holds `..`"),
        });
    }
    let rootless = options.rootless.is_some();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        if rootless {
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]})
        } else {
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                               "gid=5"]})
        },
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    if rootless {
        mounts.push(
            json!({"destination": "/sys", "type": "none", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
        );
    } else {
        mounts.push(
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", "ro"]}),
        );
        mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        );
    }
    let mut tmpfs = vec!["/tmp"];
    if options.readonly_rootfs {
        tmpfs.extend(["/var/tmp", "/run"]);
    }
    for d in tmpfs {
        mounts.push(json!({"destination": d, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777"]}));
    }
    if options.network == Network::Host {
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(f).is_file() {
                mounts.push(json!({"destination": f, "type": "none", "source": f,
                                   "options": ["rbind", "ro"]}));
            }
        }
    }
    for m in &options.mounts {
        let mut o = vec!["rbind"];
        o.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.destination, "type": "none",
                           "source": m.source.display().to_string(), "options": o}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if options.network == Network::None {
        namespaces.push(json!({"type": "network"}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    let map = |v: &[IdMapping]| -> Value {
        v.iter()
            .map(|m| json!({"containerID": m.container_id, "hostID": m.host_id, "size": m.size}))
            .collect()
    };
    if let Some(r) = &options.rootless {
        if let Some(n) = linux["namespaces"].as_array_mut() {
            n.push(json!({"type": "user"}));
        }
        linux["uidMappings"] = map(&r.uid_mappings);
        linux["gidMappings"] = map(&r.gid_mappings);
    } else {
        linux["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    }
    let caps = DEFAULT_CAPABILITIES;
    match &options.seccomp {
        Seccomp::Default => {
            linux["seccomp"] = crate::seccomp::default_profile(caps, std::env::consts::ARCH);
        }
        Seccomp::Profile(p) => linux["seccomp"] = p.clone(),
        Seccomp::Unconfined => {}
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": options.terminal,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
        },
        "root": {"path": root_path, "readonly": options.readonly_rootfs},
        "hostname": options.hostname,
        "mounts": mounts,
        "linux": linux,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ociup_core::document::RawDocument;
    use ociup_core::media_type::OCI_CONFIG;

    use super::*;

    fn config(c: Value) -> Config {
        let doc = json!({"architecture": "amd64", "os": "linux", "config": c,
                         "rootfs": {"type": "layers", "diff_ids": []}});
        Config::parse(RawDocument::new(
            serde_json::to_vec(&doc).unwrap(),
            OCI_CONFIG,
        ))
        .unwrap()
    }

    /// A rootfs with /etc/passwd and /etc/group (the group file through a symlink).
    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc/real")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/real/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:root,app\naudio:x:29:app\n",
        )
        .unwrap();
        // An absolute target: resolved inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/etc/real/group", t.path().join("etc/group")).unwrap();
        t
    }

    fn spec(c: &Config, o: &SpecOptions) -> Value {
        let r = rootfs();
        runtime_spec(c, r.path(), "rootfs", o).unwrap()
    }

    #[test]
    fn args_are_entrypoint_then_cmd_and_given_args_replace_cmd() {
        let c = config(json!({"Entrypoint": ["/bin/app"], "Cmd": ["--default"]}));
        let o = SpecOptions::default();
        assert_eq!(
            spec(&c, &o)["process"]["args"],
            json!(["/bin/app", "--default"])
        );
        let o = SpecOptions {
            args: vec!["x".into(), "y".into()],
            ..SpecOptions::default()
        };
        assert_eq!(
            spec(&c, &o)["process"]["args"],
            json!(["/bin/app", "x", "y"])
        );
        // --entrypoint drops the image's Cmd, as Docker does.
        let o = SpecOptions {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            ..SpecOptions::default()
        };
        assert_eq!(spec(&c, &o)["process"]["args"], json!(["/bin/sh", "-c"]));
        let empty = config(json!({}));
        let r = rootfs();
        let err = runtime_spec(&empty, r.path(), "rootfs", &SpecOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no Entrypoint or Cmd"), "{err}");
    }

    #[test]
    fn env_workdir_and_defaults() {
        let c = config(json!({"Cmd": ["x"], "Env": ["A=1", "PATH=/opt/bin", "B=2"],
                              "WorkingDir": "/srv"}));
        let o = SpecOptions {
            env: vec![("B".into(), "over".into()), ("C".into(), "3".into())],
            ..SpecOptions::default()
        };
        let s = spec(&c, &o);
        assert_eq!(
            s["process"]["env"],
            json!(["A=1", "PATH=/opt/bin", "B=over", "C=3", "HOME=/root"])
        );
        assert_eq!(s["process"]["cwd"], "/srv");
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(s["process"]["capabilities"]["inheritable"], Value::Null);
        let bare = spec(&config(json!({"Cmd": ["x"]})), &SpecOptions::default());
        assert_eq!(bare["process"]["cwd"], "/");
        assert_eq!(bare["process"]["env"][0], format!("PATH={DEFAULT_PATH}"));
        let o = SpecOptions {
            workdir: Some("relative".into()),
            ..SpecOptions::default()
        };
        let r = rootfs();
        assert!(runtime_spec(&c, r.path(), "rootfs", &o).is_err());
        let o = SpecOptions {
            workdir: Some("/srv/../etc".into()),
            ..SpecOptions::default()
        };
        let err = runtime_spec(&c, r.path(), "rootfs", &o).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
    }

    #[test]
    fn users_resolve_from_the_images_files() {
        let r = rootfs();
        let u = resolve_user(r.path(), "app").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1001, "/home/app"));
        assert_eq!(u.additional_gids, [10, 29]);
        let u = resolve_user(r.path(), "app:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert!(u.additional_gids.is_empty());
        let u = resolve_user(r.path(), "4242:7").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 7, "/"));
        let u = resolve_user(r.path(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let e = resolve_user(r.path(), "nobody-here").unwrap_err();
        assert!(
            e.to_string().contains("not in the image's /etc/passwd"),
            "{e}"
        );
        let e = resolve_user(r.path(), "app:nogroup").unwrap_err();
        assert!(e.to_string().contains("/etc/group"), "{e}");
        // The image's User is used, --user wins over it.
        let c = config(json!({"Cmd": ["x"], "User": "app"}));
        let s = runtime_spec(&c, r.path(), "rootfs", &SpecOptions::default()).unwrap();
        assert_eq!(
            s["process"]["user"],
            json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 29]})
        );
        assert!(
            s["process"]["env"]
                .as_array()
                .unwrap()
                .contains(&json!("HOME=/home/app"))
        );
        let o = SpecOptions {
            user: Some("0:0".into()),
            ..SpecOptions::default()
        };
        let s = runtime_spec(&c, r.path(), "rootfs", &o).unwrap();
        assert_eq!(s["process"]["user"]["uid"], 0);
    }

    #[test]
    fn a_passwd_symlink_out_of_the_rootfs_reads_inside_it() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "evil:x:666:666::/:/bin/sh\n").unwrap();
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("etc")).unwrap();
        let target = host.path().join("secret");
        std::os::unix::fs::symlink(&target, r.path().join("etc/passwd")).unwrap();
        // The host file is not read: the link resolves to ROOTFS/<host path>, which is absent.
        assert!(resolve_user(r.path(), "evil").is_err());
        let inside = r.path().join(target.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, "evil:x:7:8::/:/bin/sh\n").unwrap();
        let u = resolve_user(r.path(), "evil").unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
    }

    #[test]
    fn seccomp_is_the_default_profile_unless_told_otherwise() {
        let c = config(json!({"Cmd": ["x"]}));
        let s = spec(&c, &SpecOptions::default());
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            s["linux"]["seccomp"],
            crate::seccomp::default_profile(DEFAULT_CAPABILITIES, std::env::consts::ARCH)
        );
        let o = SpecOptions {
            seccomp: Seccomp::Unconfined,
            ..SpecOptions::default()
        };
        assert_eq!(spec(&c, &o)["linux"]["seccomp"], Value::Null);
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("p.json");
        let mine = json!({"defaultAction": "SCMP_ACT_ALLOW",
                          "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
        std::fs::write(&file, mine.to_string()).unwrap();
        let o = SpecOptions {
            seccomp: Seccomp::from_file(&file).unwrap(),
            ..SpecOptions::default()
        };
        assert_eq!(spec(&c, &o)["linux"]["seccomp"], mine);
        for (bad, why) in [
            ("{", "not JSON"),
            (r#"{"syscalls": []}"#, "defaultAction"),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "archMap": []}"#,
                "Docker profile",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"],
                   "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
                "Docker profile",
            ),
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = Seccomp::from_file(&file).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("p.json"), "{e}");
        }
        let e = Seccomp::from_file(&t.path().join("absent.json")).unwrap_err();
        assert!(e.to_string().contains("absent.json"), "{e}");
    }

    #[test]
    fn mounts_network_rootless_and_read_only_root() {
        let c = config(json!({"Cmd": ["x"]}));
        let s = spec(&c, &SpecOptions::default());
        let dests = |s: &Value| -> Vec<String> {
            s["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["destination"].as_str().unwrap().to_owned())
                .collect()
        };
        let d = dests(&s);
        for want in ["/proc", "/dev", "/dev/pts", "/sys", "/tmp"] {
            assert!(d.contains(&want.to_owned()), "{want} in {d:?}");
        }
        assert!(!d.contains(&"/run".to_owned()));
        let sys = &s["mounts"].as_array().unwrap()[5];
        assert_eq!(
            (sys["destination"].as_str(), sys["type"].as_str()),
            (Some("/sys"), Some("sysfs"))
        );
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && !ns.contains(&"user"), "{ns:?}");
        assert_eq!(s["root"], json!({"path": "rootfs", "readonly": false}));

        let o = SpecOptions {
            network: Network::Host,
            readonly_rootfs: true,
            mounts: vec![
                "/srv/data:/data:ro".parse().unwrap(),
                "/x:/y".parse().unwrap(),
            ],
            rootless: Some(Rootless::for_caller(
                1000,
                1000,
                Some("me"),
                "other:100000:65536\nme:200000:65536\n",
                "1000:300000:1000\n",
            )),
            terminal: true,
            ..SpecOptions::default()
        };
        let s = spec(&c, &o);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["process"]["terminal"], true);
        assert!(
            s["process"]["env"]
                .as_array()
                .unwrap()
                .contains(&json!("TERM=xterm"))
        );
        let d = dests(&s);
        assert!(d.contains(&"/run".to_owned()) && d.contains(&"/var/tmp".to_owned()));
        let data = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(data["options"], json!(["rbind", "ro"]));
        assert_eq!(data["source"], "/srv/data");
        let ns = s["linux"]["namespaces"].to_string();
        assert!(!ns.contains("network") && ns.contains("user"), "{ns}");
        assert_eq!(
            s["linux"]["uidMappings"],
            json!([{"containerID": 0, "hostID": 1000, "size": 1},
                   {"containerID": 1, "hostID": 200000, "size": 65536}])
        );
        assert_eq!(
            s["linux"]["gidMappings"][1],
            json!({"containerID": 1, "hostID": 300000, "size": 1000})
        );
        assert_eq!(s["linux"]["resources"], Value::Null);
        assert!(!s["mounts"].to_string().contains("gid=5"));
        assert!("/a".parse::<BindMount>().is_err());
        assert!("a:relative".parse::<BindMount>().is_err());
        assert!("a:/b:bogus".parse::<BindMount>().is_err());
        assert!("a:/etc/../x".parse::<BindMount>().is_err());
        assert!("a:/..".parse::<BindMount>().is_err());
        assert!("a:/x..y/..z".parse::<BindMount>().is_ok());
    }
}
