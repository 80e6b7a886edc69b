//! The Ray driver (`python -m inflow_ray`, in `python/`) on a real Ray cluster of one head node
//! on loopback, with the reference model: `index` in 3 parts equals one `inflow index` process
//! file for file; a part whose `inflow` process is killed mid-run is retried by Ray, resumes, and
//! still gives the same store with every row once; `score` in 3 parts equals `inflow score` on
//! the whole store.
//!
//! Needs `ray` for `python3` (the driver itself comes from `python/` through `PYTHONPATH`).
//! Without it the test says "skipped: ray not installed" and passes, unless
//! `INFLOW_REQUIRE_RAY=1` (CI), where it fails. The Ray processes it starts are recorded and
//! killed by process id at the end, also when the test fails; nothing else is touched.

mod common;

use common::{arg, asset, run_ok};
use inflow_testkit::{root, scratch, smollm2};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The index settings every run of this test shares: 12 rows in 12 shards of one row.
const INDEX_FLAGS: &[&str] = &[
    "--limit",
    "12",
    "--max-tokens",
    "64",
    "--rank",
    "2",
    "--shard-size",
    "1",
];

/// `python/`, where the driver's package lives.
fn python_dir() -> PathBuf {
    root().join("python")
}

/// `PYTHONPATH` with `python/` first.
fn python_path() -> String {
    let mut p = arg(&python_dir());
    if let Ok(old) = std::env::var("PYTHONPATH") {
        if !old.is_empty() {
            p = format!("{p}:{old}");
        }
    }
    p
}

/// Whether `python3` imports ray and the driver; the import error otherwise.
fn ray_importable() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import ray, inflow_ray"])
        .env("PYTHONPATH", python_path())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        // The exception's line, e.g. "ModuleNotFoundError: No module named 'ray'".
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("import failed")
            .to_string()),
        Err(e) => Err(format!("python3: {e}")),
    }
}

/// A path made absolute and canonical, as an argument: the driver makes its inputs absolute, so
/// the single-process runs get the very same strings (the store's spec records them).
fn canonical(p: &Path) -> String {
    arg(&std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Every process as (pid, parent pid, state, command line words).
fn processes() -> Vec<(u32, u32, char, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(entry.path().join("stat")),
            std::fs::read(entry.path().join("cmdline")),
        ) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let words = cmdline
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        out.push((pid, ppid, state, words));
    }
    out
}

/// Whether `pid` is gone (or a zombie, which holds nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|s| s == "Z"),
    }
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// A Ray head started by this test on loopback. Its processes are those whose command line
/// names its own temp folder, recorded when it starts, and their descendants (workers, and the
/// `inflow` processes they run); dropping it kills exactly those, by pid.
struct RayHead {
    address: String,
    /// Ray's token authentication, on for this cluster: the driver and the tasks need the token.
    token: String,
    temp: PathBuf,
    roots: BTreeSet<u32>,
    /// A temp folder outside the scratch folder, removed on drop (when the scratch path is too
    /// long for Ray's Unix sockets).
    own_temp: bool,
}

impl RayHead {
    fn start(scratch: &Path) -> RayHead {
        // Ray puts Unix sockets at TEMP/session_<date>_<time>_<pid>/sockets/plasma_store:
        // about 65 bytes after TEMP, of the 107 a socket path may have.
        let mut temp = scratch.join("r");
        let mut own_temp = false;
        if temp.as_os_str().len() > 40 {
            temp = PathBuf::from(format!("/tmp/inflow-ray-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&temp);
            own_temp = true;
        }
        std::fs::create_dir_all(&temp).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = scratch.join("ray-start.log");
        let log = File::create(&log_path).unwrap();
        let mut head = RayHead {
            address: format!("127.0.0.1:{port}"),
            token: random_hex(16),
            temp,
            roots: BTreeSet::new(),
            own_temp,
        };
        // The `ray` command is ray.scripts.scripts:main; going through python3 does not need
        // pip's script folder on PATH.
        let status = Command::new("python3")
            .args([
                "-c",
                "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                &format!("--port={port}"),
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
                &format!("--temp-dir={}", head.temp.display()),
            ])
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .env("RAY_AUTH_MODE", "token")
            .env("RAY_AUTH_TOKEN", &head.token)
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        head.record();
        assert!(
            status.success(),
            "ray start failed ({status}):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        assert!(
            !head.roots.is_empty(),
            "ray start succeeded but no process names {}",
            head.temp.display()
        );
        eprintln!(
            "ray head at {} (temp {}), processes {:?}",
            head.address,
            head.temp.display(),
            head.roots
        );
        head
    }

    /// Adds the processes whose command line names the temp folder.
    fn record(&mut self) {
        let tag = arg(&self.temp);
        for (pid, _, _, words) in processes() {
            if pid != std::process::id() && words.iter().any(|w| w.contains(&tag)) {
                self.roots.insert(pid);
            }
        }
    }

    /// The recorded processes and all their descendants, alive now.
    fn tree(&self) -> Vec<u32> {
        let ps = processes();
        let mut mine = self.roots.clone();
        loop {
            let before = mine.len();
            for (pid, ppid, _, _) in &ps {
                if mine.contains(ppid) && *ppid > 1 {
                    mine.insert(*pid);
                }
            }
            if mine.len() == before {
                break;
            }
        }
        mine.into_iter().filter(|&p| !gone(p)).collect()
    }
}

impl Drop for RayHead {
    fn drop(&mut self) {
        self.record();
        let pids = self.tree();
        signal("TERM", &pids);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && pids.iter().any(|&p| !gone(p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<u32> = pids.iter().copied().filter(|&p| !gone(p)).collect();
        signal("KILL", &left);
        eprintln!(
            "ray head stopped: killed {pids:?} ({} needed SIGKILL)",
            left.len()
        );
        if self.own_temp {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

/// A child process killed if the test ends before it does.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `n` random bytes from /dev/urandom, in hex.
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `python3 -m inflow_ray args…` against `head`, run from `cwd`.
fn driver(head: &RayHead, cwd: &Path, args: &[String]) -> Command {
    let mut c = Command::new("python3");
    c.arg("-m")
        .arg("inflow_ray")
        .args(args)
        .env("PYTHONPATH", python_path())
        .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", &head.token)
        .current_dir(cwd)
        .stdin(Stdio::null());
    c
}

/// The final JSON line a successful driver run printed on stdout.
fn summary(what: &str, out: &Output) -> Value {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    eprintln!("{what}: stderr:\n{stderr}");
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: last stdout line `{last}`: {e}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `store` holds exactly what `reference` holds: same spec and rows, every shard's files and
/// `samples.parquet` byte for byte, each row once in order.
fn assert_same_store(store: &Path, reference: &Path) {
    let (m, r) = (
        read_json(&store.join("manifest.json")),
        read_json(&reference.join("manifest.json")),
    );
    let ctx = format!("{} vs {}", store.display(), reference.display());
    assert_eq!(m["status"], "complete", "{ctx}");
    assert_eq!(m["n_samples"], r["n_samples"], "{ctx}: n_samples");
    assert_eq!(m["spec"], r["spec"], "{ctx}: spec");
    assert_eq!(m["spec"]["dim"], r["spec"]["dim"], "{ctx}: dim");
    assert!(
        m.get("part").is_none_or(Value::is_null),
        "{ctx}: a merged store is whole"
    );
    let n = m["n_samples"].as_u64().unwrap();
    let (shards, ref_shards) = (
        m["shards"].as_array().unwrap(),
        r["shards"].as_array().unwrap(),
    );
    assert_eq!(shards.len(), ref_shards.len(), "{ctx}: shards");
    // Every row exactly once: shards in order, contiguous, covering [0, n).
    let mut next = 0;
    for (i, (s, rs)) in shards.iter().zip(ref_shards).enumerate() {
        assert_eq!(s["index"].as_u64(), Some(i as u64), "{ctx}: shard order");
        assert_eq!(
            s["start_row"].as_u64(),
            Some(next),
            "{ctx}: shard {i} start"
        );
        next = s["end_row"].as_u64().unwrap();
        for key in ["index", "start_row", "end_row", "bytes"] {
            assert_eq!(s[key], rs[key], "{ctx}: shard {i} {key}");
        }
        for key in ["features", "norms", "samples", "scales"] {
            let (Some(f), Some(rf)) = (s[key].as_str(), rs[key].as_str()) else {
                assert_eq!(s[key], rs[key], "{ctx}: shard {i} {key}");
                continue;
            };
            let (a, b) = (
                std::fs::read(store.join(f)),
                std::fs::read(reference.join(rf)),
            );
            assert!(
                a.as_ref().unwrap() == b.as_ref().unwrap(),
                "{ctx}: shard {i} {key} ({f}) differs"
            );
        }
    }
    assert_eq!(next, n, "{ctx}: rows covered");
    assert_eq!(
        std::fs::read(store.join("samples.parquet")).unwrap(),
        std::fs::read(reference.join("samples.parquet")).unwrap(),
        "{ctx}: samples.parquet differs"
    );
    let (cols, _) = inflow::scores::table::read_table(&store.join("samples.parquet")).unwrap();
    let ids = cols
        .iter()
        .find(|c| c.0 == "id")
        .and_then(|c| c.1.as_str())
        .expect("samples.parquet has an id column");
    assert_eq!(ids.len() as u64, n, "{ctx}: samples rows");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "{ctx}: duplicate id"
    );
}

/// The `--shard 1/3` inflow process writing into `parts`, if there is one.
fn part_one_process(parts: &str) -> Option<u32> {
    processes().into_iter().find_map(|(pid, _, state, w)| {
        let shard = w.windows(2).any(|p| p[0] == "--shard" && p[1] == "1/3");
        let here = w.iter().any(|x| x.starts_with(parts));
        (state != 'Z' && shard && here && w.iter().any(|x| x == "index")).then_some(pid)
    })
}

#[test]
fn ray_index_and_score_in_parts_equal_one_process() {
    if let Err(why) = ray_importable() {
        if std::env::var("INFLOW_REQUIRE_RAY").as_deref() == Ok("1") {
            panic!(
                "INFLOW_REQUIRE_RAY=1 but python3 cannot import ray and inflow_ray: \
                 `pip install ray ./python` ({why})"
            );
        }
        eprintln!("skipped: ray not installed (`pip install ray ./python`): {why}");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_inflow").to_string();
    let model = canonical(&smollm2());
    let data = canonical(Path::new(&asset("train.jsonl")));
    let dir = scratch("ray");
    let dir_arg = canonical(&dir);
    let dirp = PathBuf::from(&dir_arg);
    let queries = dirp.join("queries.jsonl");
    let probes = std::fs::read_to_string(asset("probe.jsonl")).unwrap();
    let three: Vec<&str> = probes.lines().take(3).collect();
    std::fs::write(&queries, three.join("\n") + "\n").unwrap();
    let queries = arg(&queries);

    // One process, one thread (as each task runs).
    let one = dirp.join("one");
    let mut args = vec![
        "--threads",
        "1",
        "index",
        "--model",
        &model,
        "--data",
        &data,
    ];
    args.extend_from_slice(INDEX_FLAGS);
    let one_arg = arg(&one);
    args.extend(["--out", one_arg.as_str()]);
    run_ok(&args);

    let head = RayHead::start(&dirp);
    let index_args = |out: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "index",
            "--model",
            &model,
            "--data",
            &data,
            "--parts",
            "3",
            "--out",
            out,
            "--address",
            &head.address,
            "--cpus-per-task",
            "1",
            "--retries",
            "3",
            "--inflow",
            &bin,
            "--progress-interval",
            "1",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(INDEX_FLAGS.iter().map(|s| s.to_string()));
        a
    };

    // 3 parts on 2 CPUs, merged: the same store.
    let ray = dirp.join("ray");
    let v = summary(
        "inflow_ray index",
        &driver(&head, &dirp, &index_args(&arg(&ray)))
            .output()
            .unwrap(),
    );
    assert_eq!(v["parts"], 3, "{v}");
    assert_eq!(v["rows"], 12, "{v}");
    assert_eq!(v["out"].as_str(), Some(arg(&ray).as_str()), "{v}");
    assert_same_store(&ray, &one);

    // Part 1's inflow killed after its first shard: Ray retries the task, which resumes.
    let killed = dirp.join("killed");
    let parts = format!("{}.parts", arg(&killed));
    let part_manifest = Path::new(&parts).join("part-00001-of-00003/manifest.json");
    // Its output goes to files: a pipe nobody reads while we poll could fill up.
    let (out_path, err_path) = (dirp.join("killed.stdout"), dirp.join("killed.stderr"));
    let mut child = Reaped(Some(
        driver(&head, &dirp, &index_args(&arg(&killed)))
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut victim = None;
    while victim.is_none() && Instant::now() < deadline {
        if child.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        let m = std::fs::read_to_string(&part_manifest)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let started = m.as_ref().is_some_and(|m| {
            m["status"] != "complete" && m["shards"].as_array().is_some_and(|s| !s.is_empty())
        });
        if started {
            if let Some(pid) = part_one_process(&parts) {
                let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
                eprintln!(
                    "killed part 1's inflow (pid {pid}) after {} shard(s): {status:?}",
                    m.unwrap()["shards"].as_array().unwrap().len()
                );
                victim = Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "inflow_ray index (part 1 killed) still running after 300 s:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    };
    let v = summary("inflow_ray index (part 1 killed)", &out);
    let victim = victim.expect(
        "never saw part 1's inflow process between its first shard and its last: nothing killed",
    );
    assert!(gone(victim), "pid {victim} still alive");
    assert!(v["retries"].as_u64().unwrap() >= 1, "no retry seen: {v}");
    let attempts =
        std::fs::read_to_string(Path::new(&parts).join("attempts/part-00001-of-00003.jsonl"))
            .unwrap();
    assert!(attempts.lines().count() >= 2, "part 1 ran once: {attempts}");
    assert_same_store(&killed, &one);

    // Score in 3 parts of the merged store, merged: the same top-k and dense matrix as one
    // process over the whole store.
    let (top_one, full_one) = (dirp.join("top-one.parquet"), dirp.join("full-one.npy"));
    let store = arg(&ray);
    // The same score request, to one process and to the driver.
    let score = [
        "score",
        "--store",
        &store,
        "--queries",
        &queries,
        "--method",
        "cosine",
        "--top-k",
        "5",
    ];
    let (top_one_arg, full_one_arg) = (arg(&top_one), arg(&full_one));
    let one_process = ["--out", &top_one_arg, "--full", &full_one_arg];
    run_ok(&[&["--threads", "1"][..], &score, &one_process].concat());
    let (top_ray, full_ray) = (dirp.join("top-ray.parquet"), dirp.join("full-ray.npy"));
    let score_args: Vec<String> = score
        .iter()
        .copied()
        .chain([
            "--parts",
            "3",
            "--out",
            &arg(&top_ray),
            "--full",
            &arg(&full_ray),
            "--address",
            &head.address,
            "--inflow",
            &bin,
            "--progress-interval",
            "1",
        ])
        .map(|s| s.to_string())
        .collect();
    let v = summary(
        "inflow_ray score",
        &driver(&head, &dirp, &score_args).output().unwrap(),
    );
    assert_eq!(v["parts"], 3, "{v}");
    let (a, _) = inflow::scores::table::read_table(&top_ray).unwrap();
    let (b, _) = inflow::scores::table::read_table(&top_one).unwrap();
    let names =
        |c: &inflow::scores::table::Columns| c.iter().map(|c| c.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x, y, "top-k column {name} differs");
    }
    let rows = a
        .iter()
        .find(|c| c.0 == "rank")
        .map(|c| c.1.as_f64().unwrap().len());
    assert_eq!(rows, Some(3 * 5), "3 queries × top 5");
    assert_eq!(
        std::fs::read(&full_ray).unwrap(),
        std::fs::read(&full_one).unwrap(),
        "dense score matrices differ"
    );
    drop(head);
}
