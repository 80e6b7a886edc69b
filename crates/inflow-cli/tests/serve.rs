//! `inflow serve` end to end on a tiny model: a real server on loopback answering what the
//! score files hold (query view, reverse lookup, selection in the input's format, a live
//! query equal to `score`'s), queueing live queries, refusing paths and oversized input,
//! never writing to the store, 500 requests from 20 clients, and each page in a real headless
//! Chromium. Start-up refusals: no store, a score file of another store, a port in use.

mod common;

use common::{arg, argv, asset, fails, run_ok, tiny_scratch};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `inflow serve`, stopped when dropped. Its stdout stays open while it runs (a
/// closed pipe would fail the server's later writes).
struct Server {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `inflow serve ARGS` with its output piped.
fn spawn_serve(args: &[&str]) -> Child {
    common::bin()
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `inflow serve ARGS --port 0` and reads the address from its first line.
fn serve(args: &[&str]) -> Server {
    let mut child = spawn_serve(&[args, &["--port", "0", "--threads", "2"]].concat());
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("serve printed {line:?}; stderr: {err}")
        });
    assert!(line.contains("(loopback only)"), "{line}");
    let addr = url.trim_start_matches("http://").parse().unwrap();
    Server {
        child,
        addr,
        _stdout: stdout,
    }
}

/// One raw HTTP/1.1 exchange (the target is sent exactly as given, unnormalized): status,
/// lower-cased headers, body.
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body, then close.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {target}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

fn get_json(addr: SocketAddr, target: &str) -> Value {
    let (status, _, body) = http(addr, "GET", target, b"");
    assert_eq!(
        status,
        200,
        "GET {target}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

fn post_json(addr: SocketAddr, target: &str, v: &Value) -> (u16, Value) {
    let (status, _, body) = http(addr, "POST", target, v.to_string().as_bytes());
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// (training sample id, score) of each row of a top-k list the API answered.
fn hits(rows: &Value) -> Vec<(String, f64)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["sample"]["id"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Per query id, the (train id, score) list of a top-k file in rank order.
fn topk(path: &Path) -> BTreeMap<String, Vec<(String, f64)>> {
    let (cols, _) = inflow::scores::table::read_table(path).unwrap();
    let col = |n: &str| cols.iter().find(|c| c.0 == n).unwrap().1.clone();
    let (q, t, s, r) = (col("query_id"), col("train_id"), col("score"), col("rank"));
    let (q, t) = (q.as_str().unwrap().to_vec(), t.as_str().unwrap().to_vec());
    let (s, r) = (s.as_f64().unwrap(), r.as_f64().unwrap());
    let mut out: BTreeMap<String, Vec<(f64, String, f64)>> = BTreeMap::new();
    for i in 0..q.len() {
        out.entry(q[i].clone())
            .or_default()
            .push((r[i], t[i].clone(), s[i]));
    }
    out.into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k, v.into_iter().map(|(_, t, s)| (t, s)).collect())
        })
        .collect()
}

/// Every file under `dir` (links as their target text), for a before/after comparison.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let m = p.symlink_metadata().unwrap();
        if m.is_dir() {
            out.extend(snapshot(&p));
        } else if m.file_type().is_symlink() {
            out.insert(
                p.clone(),
                arg(&std::fs::read_link(&p).unwrap()).into_bytes(),
            );
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Polls a live job until it is done or failed.
fn wait_job(addr: SocketAddr, job: u64) -> Value {
    for _ in 0..2400 {
        let j = get_json(addr, &format!("/api/live/{job}"));
        if j["state"] == "done" || j["state"] == "failed" {
            return j;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("live job {job} did not finish");
}

/// The lines of a JSONL file, by 0-based record row.
fn data_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Headless Chromium on `url`: the DOM after the page's scripts ran (`--dump-dom` after the
/// virtual time budget), or a screenshot with `shot`.
fn browse(browser: &Path, profile: &Path, url: &str, shot: Option<&Path>) -> String {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
        "--window-size=1400,1200",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(p) => c.arg(format!("--screenshot={}", p.display())),
        None => c.arg("--dump-dom"),
    };
    let out = c.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first `data-train-id` inside each `data-method` block of a dumped query page.
fn dom_top1(dom: &str) -> Vec<(String, String)> {
    dom.split("class=\"card method\" data-method=\"")
        .skip(1)
        .map(|block| {
            let name = block.split('"').next().unwrap().to_string();
            let id = block
                .split("data-train-id=\"")
                .nth(1)
                .map(|s| s.split('"').next().unwrap().to_string())
                .unwrap_or_default();
            (name, id)
        })
        .collect()
}

#[test]
fn serve_answers_what_the_score_files_hold_safely_under_load_and_in_a_browser() {
    let (dir, model) = tiny_scratch("serve", 32, 2, 5);
    let (store, train, probes) = (
        dir.arg("store"),
        asset("train.jsonl"),
        asset("probe-tasks.jsonl"),
    );
    run_ok(&argv(
        "index --model {} --data {} --limit 24 --out {} --rank 4 --max-tokens 96 --threads 1",
        &[&model, &train, &store],
    ));
    let (cos, dot, mean) = (
        dir.arg("cos.parquet"),
        dir.arg("dot.parquet"),
        dir.arg("mean.parquet"),
    );
    for (m, out, extra) in [
        ("cosine", &cos, ""),
        ("dot", &dot, ""),
        ("cosine", &mean, "--aggregate mean"),
    ] {
        run_ok(&argv(
            &format!("score --store {{}} --queries {{}} --limit 6 --top-k 5 --method {m} --out {{}} {extra}"),
            &[&store, &probes, out],
        ));
    }

    // Refused at start, each with one line naming the culprit.
    let e = fails(&argv("serve --store {} --port 0", &[&dir.arg("nowhere")]));
    assert!(e.contains("nowhere") && e.contains("not a store"), "{e}");
    let alien = dir.join("alien.parquet");
    inflow::scores::table::write_table(
        &alien,
        vec![
            (
                "train_id",
                inflow::scores::table::Column::Str(vec!["999-deadbeef".into()]),
            ),
            ("score", inflow::scores::table::Column::F32(vec![1.0])),
        ],
        &[],
    )
    .unwrap();
    let e = fails(&argv(
        "serve --store {} --scores {} --port 0",
        &[&store, &arg(&alien)],
    ));
    assert!(
        e.contains("alien.parquet") && e.contains("999-deadbeef") && e.contains("not a sample"),
        "{e}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let e = fails(&argv("serve --store {} --port {}", &[&store, &port]));
    assert!(e.contains("already in use") && e.contains(&port), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // A link out of the store, which must never be served.
    let outside = dir.join("secret.txt");
    std::fs::write(&outside, "SECRET-OUTSIDE-THE-STORE").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("store").join("leak.txt")).unwrap();
    let before = snapshot(&dir.join("store"));

    let srv = serve(&argv(
        "--store {} --scores {} {} {} --queries {} --model {}",
        &[&store, &cos, &dot, &mean, &probes, &model],
    ));
    let a = srv.addr;

    let ov = get_json(a, "/api/overview");
    assert_eq!(ov["facts"]["n_samples"], 24);
    let names: Vec<&str> = ov["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cosine", "dot", "cosine (mean)"]);
    assert_eq!(ov["loss_hist"]["n"], 24);
    assert_eq!(ov["self_hist"]["n"], 24);

    // The query view holds each file's lists exactly, in rank order.
    let files = [
        ("cosine", topk(Path::new(&cos))),
        ("dot", topk(Path::new(&dot))),
    ];
    let mut query_index = HashMap::new();
    for qid in files[0].1.keys() {
        let found = get_json(a, &format!("/api/queries?q={qid}"));
        assert_eq!(found["total"], 1, "{qid}");
        let qi = found["queries"][0]["index"].as_u64().unwrap();
        query_index.insert(qid.clone(), qi);
        let view = get_json(a, &format!("/api/query/{qi}"));
        assert_eq!(view["query"]["id"], qid.as_str());
        for (m, (name, lists)) in view["methods"].as_array().unwrap().iter().zip(&files) {
            assert_eq!(m["name"], *name);
            let got = hits(&m["rows"]);
            let want = &lists[qid];
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.0, w.0, "{name} {qid}");
                assert!(
                    (g.1 - w.1).abs() <= 1e-6 * w.1.abs().max(1.0),
                    "{name} {qid}: {g:?} {w:?}"
                );
            }
        }
        let ag = &view["agreement"][0];
        let (ca, cb): (Vec<&String>, Vec<&String>) = (
            files[0].1[qid].iter().map(|x| &x.0).collect(),
            files[1].1[qid].iter().map(|x| &x.0).collect(),
        );
        let common = ca.iter().filter(|t| cb.contains(t)).count();
        assert_eq!(ag["n_common"], common);
    }

    // The reverse lookup: every (query, rank) where a sample stands in the cosine file.
    let (sid, _) = files[0].1.values().next().unwrap()[0].clone();
    let srow = get_json(a, &format!("/api/samples?q={sid}"))["samples"][0]["index"]
        .as_u64()
        .unwrap();
    let view = get_json(a, &format!("/api/sample/{srow}"));
    assert_eq!(view["sample"]["id"], sid.as_str());
    let mut pulls: Vec<(String, u64)> = Vec::new();
    for (q, list) in &files[0].1 {
        if let Some(r) = list.iter().position(|x| x.0 == sid) {
            pulls.push((q.clone(), r as u64 + 1));
        }
    }
    let mut got: Vec<(String, u64)> = view["methods"][0]["pulls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["query"]["id"].as_str().unwrap().to_string(),
                p["rank"].as_u64().unwrap(),
            )
        })
        .collect();
    pulls.sort();
    got.sort();
    assert_eq!(got, pulls);
    assert_eq!(view["methods"][2]["kind"], "per-sample");

    // A live query of a probe's own record scores as `score` did.
    let probe_lines = data_lines(Path::new(&probes));
    let first_q = files[0]
        .1
        .keys()
        .find(|q| query_index[*q] == 0)
        .unwrap()
        .clone();
    let (status, sub) = post_json(
        a,
        "/api/live",
        &json!({"record": probe_lines[0], "method": "cosine", "top_k": 5}),
    );
    assert_eq!(status, 200, "{sub}");
    let done = wait_job(a, sub["job"].as_u64().unwrap());
    assert_eq!(done["state"], "done", "{done}");
    let live = hits(&done["rows"]);
    for (g, w) in live.iter().zip(&files[0].1[&first_q]) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() <= 1e-5, "{g:?} {w:?}");
    }
    // Live queries queue: three submitted at once run one after another.
    let jobs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(move || {
                    let body = json!({"prompt": format!("Question {i}: name a colour."), "response": "Blue.", "method": "dot", "top_k": 3});
                    let (st, v) = post_json(a, "/api/live", &body);
                    assert_eq!(st, 200, "{v}");
                    v["job"].as_u64().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut spans: Vec<(u64, u64)> = jobs
        .iter()
        .map(|&j| {
            let d = wait_job(a, j);
            assert_eq!(d["state"], "done", "{d}");
            (
                d["started_event"].as_u64().unwrap(),
                d["finished_event"].as_u64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 > w[0].1, "live jobs overlapped: {spans:?}");
    }

    // Bad live input is refused with what was expected.
    let (st, v) = post_json(
        a,
        "/api/live",
        &json!({"prompt": "x".repeat(17_000), "response": "y", "method": "cosine"}),
    );
    assert_eq!(st, 400);
    assert!(
        v["error"].as_str().unwrap().contains("at most 16000"),
        "{v}"
    );
    let (st, v) = post_json(
        a,
        "/api/live",
        &json!({"prompt": "p", "response": "r", "method": "tracin"}),
    );
    assert_eq!(st, 400);
    assert!(
        v["error"].as_str().unwrap().contains("one of: cosine"),
        "{v}"
    );
    let (st, v) = post_json(
        a,
        "/api/live",
        &json!({"record": "{\"instruction\": 3}", "method": "cosine"}),
    );
    assert_eq!(st, 200);
    let failed = wait_job(a, v["job"].as_u64().unwrap());
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("live query"),
        "{failed}"
    );
    let big = vec![b'x'; 100 * 1024];
    assert_eq!(http(a, "POST", "/api/live", &big).0, 413);
    assert_eq!(http(a, "POST", "/api/selection", &big).0, 413);

    // Selections come back in the input's format, byte for byte.
    let train_lines = data_lines(Path::new(&train));
    let (st, h, body) = http(
        a,
        "POST",
        "/api/selection",
        json!({"rows": [3, 0]}).to_string().as_bytes(),
    );
    assert_eq!(st, 200);
    assert_eq!(h["x-inflow-selected"], "2");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{}{}", train_lines[0], train_lines[3])
    );
    let per = inflow::eval::compare::ScoreFile::read(Path::new(&mean)).unwrap();
    let mut order: Vec<(f64, &String)> = per.score.iter().copied().zip(&per.train).collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (st, h, body) = http(
        a,
        "GET",
        "/api/selection?method=cosine%20(mean)&percent=25",
        b"",
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h["x-inflow-selected"], "6");
    let rows = inflow::store::Store::open(Path::new(&store))
        .unwrap()
        .samples()
        .unwrap();
    let mut want_rows: Vec<usize> = order[..6]
        .iter()
        .map(|(_, id)| rows.iter().find(|r| &&r.id == id).unwrap().row as usize)
        .collect();
    want_rows.sort();
    let want: String = want_rows.iter().map(|&r| train_lines[r].clone()).collect();
    assert_eq!(String::from_utf8(body).unwrap(), want);

    // No request names a file: traversal, encoded traversal, absolute paths and the link.
    for target in [
        "/leak.txt",
        "/../leak.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/app.js/../../manifest.json",
        "/manifest.json",
        "//etc/passwd",
        "/etc/passwd",
        "/api/sample/..%2fmanifest.json",
        "/api/query/%2e%2e",
        "/api/sample/99999",
        "/samples.parquet",
    ] {
        let (st, _, body) = http(a, "GET", target, b"");
        let text = String::from_utf8_lossy(&body);
        assert!(st == 404 || st == 400, "{target}: {st}");
        assert!(
            !text.contains("SECRET") && !text.contains("root:") && !text.contains("format_version"),
            "{target}: {text}"
        );
    }

    // 500 requests from 20 clients: every answer equals the one given alone.
    let targets: Vec<String> = [
        "/",
        "/app.js",
        "/style.css",
        "/api/overview",
        "/api/queries?q=task",
        "/api/samples?q=the",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain((0..6).map(|q| format!("/api/query/{q}")))
    .chain((0..8).map(|r| format!("/api/sample/{r}")))
    .collect();
    let expected: Vec<Vec<u8>> = targets.iter().map(|t| http(a, "GET", t, b"").2).collect();
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|c| {
                let (targets, expected) = (&targets, &expected);
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let k = (c * 7 + i * 3) % targets.len();
                            let t0 = Instant::now();
                            let (st, _, body) = http(a, "GET", &targets[k], b"");
                            let dt = t0.elapsed().as_secs_f64() * 1e3;
                            assert_eq!(st, 200, "{}", targets[k]);
                            assert!(
                                body == expected[k],
                                "{}: answer differs under load",
                                targets[k]
                            );
                            dt
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).min(latencies.len()) - 1];
    // Reported, never asserted (tests do not time things).
    eprintln!(
        "serve load: {} requests, 20 clients: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    assert_eq!(latencies.len(), 500);

    // Each page in a real browser: what a person would see.
    match chromium() {
        None => {
            assert!(
                std::env::var("INFLOW_REQUIRE_CHROMIUM").is_err(),
                "INFLOW_REQUIRE_CHROMIUM is set but chromium is not installed"
            );
            eprintln!("chromium not installed: browser checks skipped");
        }
        Some(browser) => {
            let profile = dir.join("chromium-profile");
            let base = format!("http://{a}");
            let dom = browse(&browser, &profile, &format!("{base}/#/"), None);
            assert!(dom.contains("data-ready=\"overview\""), "{dom}");
            assert!(dom.contains("<span id=\"n-samples\">24</span>"));
            for n in &names {
                assert!(dom.contains(&format!("data-method=\"{n}\"")), "{n}");
            }
            for (qid, qi) in &query_index {
                let dom = browse(&browser, &profile, &format!("{base}/#/query/{qi}"), None);
                assert!(dom.contains("data-ready=\"query\""), "{dom}");
                let top1 = dom_top1(&dom);
                let want: Vec<(String, String)> = files
                    .iter()
                    .map(|(n, l)| (n.to_string(), l[qid][0].0.clone()))
                    .collect();
                assert_eq!(top1, want, "query {qid}");
                assert_eq!(
                    dom.matches("data-rank=").count(),
                    files.iter().map(|f| f.1[qid].len()).sum::<usize>()
                );
            }
            let dom = browse(&browser, &profile, &format!("{base}/#/sample/{srow}"), None);
            assert!(
                dom.contains(&format!("<span id=\"sample-id\">{sid}</span>")),
                "{dom}"
            );
            assert!(dom.contains(&format!("<span class=\"n-pulls\">{}</span>", pulls.len())));
            for page in ["queries", "samples", "live", "select"] {
                let dom = browse(&browser, &profile, &format!("{base}/#/{page}"), None);
                assert!(
                    dom.contains(&format!("data-ready=\"{page}\"")),
                    "{page}: {dom}"
                );
            }
            let shot = dir.join("query.png");
            browse(
                &browser,
                &profile,
                &format!("{base}/#/query/0"),
                Some(&shot),
            );
            let png = std::fs::read(&shot).unwrap();
            assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
        }
    }

    drop(srv);
    assert!(
        snapshot(&dir.join("store")) == before,
        "the store changed while served"
    );

    // Beyond loopback, a warning.
    let mut child = spawn_serve(&argv("--store {} --host 0.0.0.0 --port 0", &[&store]));
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("warning") && line.contains("not a loopback"),
        "{line}"
    );
}
