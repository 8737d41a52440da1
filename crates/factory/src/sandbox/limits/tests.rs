use super::*;

/// The mount table of the development machine: cgroup v1 with an unused unified
/// hierarchy (only `hugetlb`) in `/sys/fs/cgroup/unified`.
const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_OWN: &str = "8:pids:/\n4:memory:/process_api/81\n1:cpu:/\n0::/\n";

#[test]
fn the_hierarchies_are_found_under_their_mount_points() {
    let found = locate(HYBRID_MOUNTS, HYBRID_OWN);
    assert_eq!(found.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    let v1: Vec<(&str, &Path)> = found
        .v1
        .iter()
        .map(|(c, p)| (c.as_str(), p.as_path()))
        .collect();
    assert_eq!(
        v1,
        vec![
            ("cpu", Path::new("/sys/fs/cgroup/cpu")),
            ("memory", Path::new("/sys/fs/cgroup/memory/process_api/81")),
            ("pids", Path::new("/sys/fs/cgroup/pids")),
        ]
    );
    // A systemd service on a unified host, and a mount whose root is the service's own
    // cgroup (a cgroup namespace): the path is taken relative to the mount's root.
    let unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let own = "0::/system.slice/gantry.service\n";
    assert_eq!(
        locate(unified, own).v2,
        Some(PathBuf::from("/sys/fs/cgroup/system.slice/gantry.service"))
    );
    let ns = "30 23 0:26 /system.slice/gantry.service /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(locate(ns, own).v2, Some(PathBuf::from("/sys/fs/cgroup")));
}

#[test]
fn a_v2_cgroup_without_memory_and_pids_is_not_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cgroup.controllers"), "hugetlb\n").expect("write");
    let err = delegate_v2(dir.path()).expect_err("no memory controller");
    assert!(err.contains("not delegated (it has: hugetlb)"), "{err}");
}

/// A cgroup file system stand-in: the leaf exists with the files the kernel would
/// make (a temporary directory cannot make them by itself).
fn fake(version: CgroupVersion, leaf: &str) -> (tempfile::TempDir, Cgroups) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cgroups {
        version,
        memory: dir.path().join("memory"),
        pids: dir.path().join("pids"),
        cpu: Some(dir.path().join("cpu")),
    };
    let c = match version {
        CgroupVersion::V1 => c,
        CgroupVersion::V2 => Cgroups {
            version,
            memory: dir.path().to_path_buf(),
            pids: dir.path().to_path_buf(),
            cpu: Some(dir.path().to_path_buf()),
        },
    };
    for d in c.dirs(leaf) {
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("cgroup.procs"), "").expect("procs");
        // Swap accounting is on: its files exist (they are skipped when they do not).
        std::fs::write(d.join("memory.memsw.limit_in_bytes"), "").expect("memsw");
        std::fs::write(d.join("memory.swap.max"), "").expect("swap");
    }
    (dir, c)
}

fn limits() -> Limits {
    Limits {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        pids: Some(32),
        cpu_seconds: Some(30),
    }
}

#[test]
fn a_v2_cgroup_gets_every_limit_in_one_directory() {
    let leaf = "gantry-test";
    let (_dir, c) = fake(CgroupVersion::V2, leaf);
    let prepared = c.create(&limits(), leaf).expect("create");
    assert!(prepared.joins() && prepared.inner.is_empty());
    let read = |f: &str| std::fs::read_to_string(c.memory.join(leaf).join(f)).expect(f);
    assert_eq!(read("memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("memory.swap.max"), "0");
    assert_eq!(read("pids.max"), "32");
    assert_eq!(read("cpu.max"), "50000 100000");
}

#[test]
fn a_v1_cgroup_gets_a_directory_per_controller() {
    let leaf = "gantry-test";
    let (_dir, c) = fake(CgroupVersion::V1, leaf);
    let only_pids = Limits {
        pids: Some(8),
        ..Limits::default()
    };
    c.create(&only_pids, leaf).expect("create");
    let read = |p: &Path, f: &str| std::fs::read_to_string(p.join(leaf).join(f)).expect(f);
    assert_eq!(read(&c.pids, "pids.max"), "8");
    assert_eq!(read(&c.memory, "memory.limit_in_bytes"), "-1");
    assert_eq!(read(&c.memory, "memory.memsw.limit_in_bytes"), "-1");
    let cpu = c.cpu.clone().expect("cpu");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "-1");
    c.create(&limits(), leaf).expect("create again");
    assert_eq!(
        read(&c.memory, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    let no_cpu = Cgroups { cpu: None, ..c };
    let err = no_cpu
        .create(&limits(), leaf)
        .expect_err("cpus without cpu controller");
    assert!(matches!(err, LimitError::NoCpuController), "{err}");
}

#[test]
fn the_events_tell_which_limit_struck() {
    let leaf = "gantry-test";
    for version in [CgroupVersion::V1, CgroupVersion::V2] {
        let (_dir, c) = fake(version, leaf);
        assert_eq!(c.breach(leaf), None, "no events file is no breach");
        let oom_file = match version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let write = |p: &Path, f: &str, text: &str| {
            std::fs::write(p.join(leaf).join(f), text).expect("write");
        };
        write(&c.pids, "pids.events", "max 0\n");
        write(&c.memory, oom_file, "oom 0\noom_kill 0\n");
        assert_eq!(c.breach(leaf), None);
        write(&c.pids, "pids.events", "max 12\n");
        assert_eq!(c.breach(leaf), Some(Breach::Pids));
        write(&c.memory, oom_file, "under_oom 0\noom_kill 1\n");
        assert_eq!(c.breach(leaf), Some(Breach::Memory), "{version:?}");
    }
}

#[test]
fn names_rlimits_and_reasons() {
    let a = leaf_name(Path::new("/d/runs/a/exit_status"));
    assert_eq!(a, leaf_name(Path::new("/d/runs/a/exit_status")));
    assert_ne!(a, leaf_name(Path::new("/d/runs/a/gates-r1/gate-x.exit")));
    assert!(a.starts_with("gantry-") && a.len() == 23, "{a}");
    let args = prlimit_args(Path::new("/usr/bin/prlimit"), &limits());
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    assert_eq!(
        args,
        [
            "/usr/bin/prlimit",
            "--data=67108864",
            "--cpu=30:35",
            "--nproc=32",
            "--"
        ]
    );
    assert!(Breach::Memory.reason("run").starts_with("oom: "));
    assert!(Breach::Pids.reason("gate").starts_with("pids: "));
    assert!(Breach::Cpu.reason("run").starts_with("cpu: "));
}

#[test]
fn cpu_seconds_are_the_share_over_the_timeout() {
    let mut spec = gantry_core::sandbox::SandboxSpec::of(gantry_core::sandbox::SandboxKind::Bwrap);
    spec.nano_cpus = Some(1_500_000_000);
    let l = Limits::of(&spec, Some(Duration::from_secs(60)));
    assert_eq!(l.cpu_seconds, Some(90));
    assert_eq!(Limits::of(&spec, None).cpu_seconds, None);
    assert!(!l.is_empty() && Limits::default().is_empty());
}

#[tokio::test]
async fn unavailable_limits_refuse_and_empty_ones_need_nothing() {
    let none = Limiter::Unavailable {
        reason: "no way".to_string(),
    };
    let err = none
        .prepare(&limits(), Path::new("/x/exit_status"))
        .expect_err("unavailable");
    assert!(err.to_string().contains("no way"), "{err}");
    let p = none
        .prepare(&Limits::default(), Path::new("/x/exit_status"))
        .expect("nothing asked");
    assert!(!p.joins() && p.inner.is_empty());
    let r = Limiter::Rlimit {
        prlimit: PathBuf::from("/usr/bin/prlimit"),
    };
    let signal = Some(nix::libc::SIGXCPU);
    assert_eq!(
        r.settle(&limits(), Path::new("/x"), signal).await,
        Some(Breach::Cpu)
    );
    assert_eq!(r.settle(&limits(), Path::new("/x"), Some(9)).await, None);
    // Root is never held by RLIMIT_NPROC: a pids limit is refused, not ignored.
    let pids = Limits {
        pids: Some(8),
        ..Limits::default()
    };
    let asked = r.prepare(&pids, Path::new("/x/exit_status"));
    if nix::unistd::geteuid().is_root() {
        assert!(matches!(asked, Err(LimitError::PidsAsRoot)), "{asked:?}");
    } else {
        let inner = asked.expect("non-root").inner;
        assert!(inner.iter().any(|a| a == "--nproc=8"), "{inner:?}");
    }
}
