//! Test support shared by the tests of the inflow crates (the library's unit and integration
//! tests, the binary's end-to-end tests): the repository's paths, scratch folders and Python
//! checks. Only tests depend on it; it depends on nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A bundled data file, `assets/data/{name}`.
pub fn asset(name: &str) -> PathBuf {
    root().join("assets/data").join(name)
}

/// The reference model (SmolLM2-135M-Instruct, Q4_1), which `./scripts/fetch-model.sh` fetches.
pub fn smollm2() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/fetch-model.sh",
        p.display()
    );
    p
}

/// A test's scratch folder: fresh and empty, unique to the process, the call and the name;
/// removed when dropped, unless the test is failing (then it stays for a look).
pub struct Scratch(PathBuf);

/// A fresh [`Scratch`] folder.
pub fn scratch(name: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "inflow-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

impl Scratch {
    /// `name` in the folder, as a command-line argument.
    pub fn arg(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether `python3` can import `module`.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `python3 -c script args…`, which must succeed (its stderr is shown if it does not);
/// its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
