//! Running the real `tether check` binary on config files written to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// `tether check` only reads a few files; anything near this bound is a hang.
const CHECK_DEADLINE: Duration = Duration::from_secs(30);

/// A temporary directory holding config (and certificate) files.
pub struct ConfigDir {
    dir: tempfile::TempDir,
}

/// What one `tether check` run printed and how it exited.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ConfigDir {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `contents` to `name` inside the directory.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Write a fresh self-signed certificate for `names` as `<stem>.crt` / `<stem>.key`.
    pub fn write_self_signed(&self, stem: &str, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let pair = rcgen::generate_simple_self_signed(names).expect("certificate");
        self.write(&format!("{stem}.crt"), &pair.cert.pem());
        self.write(&format!("{stem}.key"), &pair.signing_key.serialize_pem());
    }

    /// `tether check -c <name>` run inside the directory with exactly `env` as environment,
    /// so messages name the file as `<name>`.
    pub async fn check(&self, name: &str, env: &[(&str, &str)]) -> CheckRun {
        run_check(self.dir.path(), name, env).await
    }
}

/// `tether check -c <config>` run in `cwd` with exactly `env` as environment.
pub async fn run_check(cwd: &Path, config: &str, env: &[(&str, &str)]) -> CheckRun {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "-c", config])
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the pending wait on timeout kills the child.
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tether check");
    let output = tokio::time::timeout(CHECK_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tether check -c {config} did not finish in {CHECK_DEADLINE:?}"))
        .expect("wait for tether check");
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}
