//! Running the scripts of `tests/js` (the real npm clients, headless Chromium): one way to start
//! them and read their JSON event lines. Panics loudly when Node, the npm packages or Chromium
//! are missing (scripts/test-deps.sh installs them): those tests never skip.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::WAIT;

pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// A running `node SCRIPT ARGS...` in `tests/js`, killed on drop.
pub struct NodeScript {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeScript {
    /// Starts `script`; `browser` checks for Chromium first.
    pub fn start(script: &str, args: &[String], browser: bool) -> NodeScript {
        let dir = js_dir();
        assert!(
            dir.join("node_modules/.package-lock.json").is_file(),
            "tests/js/node_modules is missing: run scripts/test-deps.sh"
        );
        if browser {
            assert!(
                std::path::Path::new("/usr/bin/chromium").exists(),
                "/usr/bin/chromium is missing: run scripts/test-deps.sh"
            );
        }
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/test-deps.sh"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        NodeScript { child, stdin, lines }
    }

    /// The next JSON line, None once the script exited; panics after `2 * WAIT` of silence.
    pub async fn next_event(&mut self) -> Option<serde_json::Value> {
        let line = tokio::time::timeout(WAIT * 2, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the script said nothing for {:?}", WAIT * 2))
            .expect("stdout readable")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }

    /// Every event up to and including `{"event":"done"}` (or the script's exit).
    pub async fn until_done(&mut self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event().await {
            let done = e["event"] == "done";
            events.push(e);
            if done {
                break;
            }
        }
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        events
    }
}
