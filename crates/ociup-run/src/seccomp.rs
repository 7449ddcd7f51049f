//! The default seccomp profile of a container: the filter containerd and Docker apply when
//! none is given, written here from its rules (which system calls, under which capabilities).
//!
//! Everything not allowed fails with `EPERM`. Allowed: the ordinary system calls of programs
//! ([`ALLOWED`]); those that touch the machine as a whole (mount, namespaces, modules, clocks,
//! reboot, tracing other users' processes, kernel keyrings, BPF, ...) only when the container
//! holds the capability that guards them ([`BY_CAPABILITY`]). `clone` without
//! `CAP_SYS_ADMIN` may not make namespaces, `clone3` then answers `ENOSYS` (so that the C
//! library falls back to `clone`, whose flags the filter can read), `personality` takes only
//! the harmless personas, and `socket` refuses `AF_VSOCK`.

use serde_json::{Value, json};

/// `EPERM`: what a refused system call answers.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` answers without `CAP_SYS_ADMIN`.
const ENOSYS: u32 = 38;
/// The `clone` flags that make namespaces (`CLONE_NEWNS`, `CLONE_NEWCGROUP`, `CLONE_NEWUTS`,
/// `CLONE_NEWIPC`, `CLONE_NEWUSER`, `CLONE_NEWPID`, `CLONE_NEWNET`): `clone` is allowed
/// without `CAP_SYS_ADMIN` only when none is set.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `AF_VSOCK`: sockets to the hypervisor are refused.
const AF_VSOCK: u64 = 40;
/// The personas `personality` may set: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `UNAME26|PER_LINUX32`, and the query (`0xffffffff`).
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// System calls allowed to every container. Names the kernel or libseccomp does not know on
/// this machine are skipped by the runtime (runc), so 32-bit and newer names can be listed.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    // Tracing is allowed on the kernels runc supports (4.8 and later closed the seccomp
    // bypass through ptrace); the pid namespace keeps it to the container's processes.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// System calls allowed only to a container holding the capability named first (`clone` and
/// `clone3` without `CAP_SYS_ADMIN` have their own rules, see the module doc).
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "finit_module", "init_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    (
        "CAP_SYS_TIME",
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The seccomp architectures of a machine (`std::env::consts::ARCH`): its own and those its
/// kernel also runs (32-bit x86 on x86_64, 32-bit ARM on aarch64, ...). Empty for one this
/// profile does not know: the runtime then filters the native architecture only.
pub fn architectures(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "x86" => &["SCMP_ARCH_X86"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => &["SCMP_ARCH_ARM"],
        "mips64" => &["SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPS"],
        "powerpc64" => &["SCMP_ARCH_PPC64LE"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        "s390x" => &["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
        "loongarch64" => &["SCMP_ARCH_LOONGARCH64"],
        _ => &[],
    }
}

/// System calls only some architectures have, allowed there.
fn by_architecture(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" | "x86" => &["arch_prctl", "modify_ldt"],
        "aarch64" | "arm" => &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "breakpoint",
            "cacheflush",
            "set_tls",
            "sync_file_range2",
        ],
        "s390x" => &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        "riscv64" => &["riscv_flush_icache"],
        _ => &[],
    }
}

/// The default profile, as the `linux.seccomp` object of an OCI runtime spec, for a container
/// holding `capabilities` (`CAP_*` names) on a machine of architecture `arch`
/// (`std::env::consts::ARCH`). See the module doc for what it allows.
pub fn default_profile(capabilities: &[&str], arch: &str) -> Value {
    let holds = |cap: &str| capabilities.contains(&cap);
    let sys_admin = holds("CAP_SYS_ADMIN");
    let mut names: Vec<&str> = ALLOWED.to_vec();
    names.extend(by_architecture(arch));
    for (cap, calls) in BY_CAPABILITY {
        if holds(cap) {
            names.extend(calls.iter().copied());
        }
    }
    names.sort_unstable();
    names.dedup();
    let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    for persona in PERSONAS {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}],
        }));
    }
    syscalls.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
    }));
    if !sys_admin {
        // s390 passes the flags second.
        let index = if arch == "s390x" { 1 } else { 0 };
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(arch),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spec::DEFAULT_CAPABILITIES;

    /// The names a profile allows without conditions on arguments.
    fn allowed(p: &Value) -> Vec<String> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r["args"].is_null())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    fn rules_for<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().contains(&json!(name)))
            .collect()
    }

    #[test]
    fn the_default_profile_denies_by_default_and_allows_ordinary_calls() {
        let p = default_profile(DEFAULT_CAPABILITIES, "x86_64");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let names = allowed(&p);
        for call in [
            "read",
            "write",
            "openat",
            "execve",
            "mmap",
            "futex",
            "exit_group",
            "wait4",
            "arch_prctl",
            "chroot",
            "ptrace",
            "statx",
            "rt_sigreturn",
        ] {
            assert!(names.iter().any(|n| n == call), "{call} allowed");
        }
        // Guarded by capabilities the default set does not hold.
        for call in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "init_module",
            "reboot",
            "acct",
            "settimeofday",
            "clock_settime",
            "kcmp",
            "syslog",
            "keyctl",
            "add_key",
            "request_key",
            "kexec_load",
            "userfaultfd",
            "pivot_root",
            "open_by_handle_at",
            "iopl",
            "swapon",
            "perf_event_open",
            "clone",
            "clone3",
            "personality",
            "socket",
        ] {
            assert!(!names.iter().any(|n| n == call), "{call} not unconditional");
        }
        // No name twice in the allow list.
        let mut sorted = names.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        // clone without namespace flags; clone3 answers ENOSYS; personality and socket by
        // argument.
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            json!([{"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(
            (&clone3[0]["action"], &clone3[0]["errnoRet"]),
            (&json!("SCMP_ACT_ERRNO"), &json!(38))
        );
        let personas: Vec<u64> = rules_for(&p, "personality")
            .iter()
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(personas, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
        let socket = rules_for(&p, "socket");
        assert_eq!(socket[0]["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket[0]["args"][0]["value"], 40);
    }

    #[test]
    fn capabilities_and_architectures_change_the_profile() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.extend(["CAP_SYS_ADMIN", "CAP_SYS_TIME"]);
        let p = default_profile(&caps, "aarch64");
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        let names = allowed(&p);
        for call in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "settimeofday",
            "set_tls",
        ] {
            assert!(names.iter().any(|n| n == call), "{call} allowed");
        }
        assert!(!names.iter().any(|n| n == "arch_prctl"));
        // With CAP_SYS_ADMIN, clone has no argument rule and clone3 no ENOSYS.
        assert_eq!(rules_for(&p, "clone").len(), 1);
        assert!(
            rules_for(&p, "clone3")
                .iter()
                .all(|r| r["action"] == "SCMP_ACT_ALLOW")
        );
        // Without CAP_SYS_CHROOT, chroot is refused.
        let no_chroot: Vec<&str> = DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != "CAP_SYS_CHROOT")
            .collect();
        let p = default_profile(&no_chroot, "x86_64");
        assert!(!allowed(&p).iter().any(|n| n == "chroot"));
        // s390x reads clone's flags from its second argument; an unknown machine names no
        // architecture (the runtime filters the native one).
        let p = default_profile(DEFAULT_CAPABILITIES, "s390x");
        assert_eq!(rules_for(&p, "clone")[0]["args"][0]["index"], 1);
        assert_eq!(default_profile(&[], "sparc64")["architectures"], json!([]));
    }
}
