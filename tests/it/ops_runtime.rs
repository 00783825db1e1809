//! The runtime's size: `runtime.workers`, else `TOKIO_WORKER_THREADS`, else the CPUs; worker
//! threads named `tether-worker-N`, and a startup line that says how many and why.

use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::http as client;
use crate::support::proxy::{ProxyProcess, TestProxy};

/// Names of the process's threads that start with `prefix`, sorted.
fn threads(proxy: &ProxyProcess, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .expect("/proc/<pid>/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_count_is_a_setting_and_the_environment_is_honoured() {
    let backend = EchoBackend::start("a").await;
    let base = || Yaml::new().listener("public").route("app").upstream("app", |u| u.backend("a", backend.addr));

    let configured = TestProxy::builder()
        .yaml(base().raw("runtime: { workers: 3 }\n"))
        .env("TOKIO_WORKER_THREADS", "1")
        .spawn_process()
        .await;
    let line = configured.wait_for_stderr_line("the runtime line", "runtime started").await;
    assert!(line.contains("\"workers\":3") && line.contains("\"from\":\"runtime.workers\""), "{line}");
    assert_eq!(threads(&configured, "tether-worker"), ["tether-worker-0", "tether-worker-1", "tether-worker-2"]);
    assert_eq!(client::get(configured.addr("public"), "/", &[]).await.status, 200);

    let from_env = TestProxy::builder().yaml(base()).env("TOKIO_WORKER_THREADS", "1").spawn_process().await;
    let line = from_env.wait_for_stderr_line("the runtime line", "runtime started").await;
    assert!(line.contains("\"workers\":1") && line.contains("\"from\":\"TOKIO_WORKER_THREADS\""), "{line}");
    assert_eq!(threads(&from_env, "tether-worker"), ["tether-worker-0"]);
    assert_eq!(client::get(from_env.addr("public"), "/", &[]).await.status, 200);
}
