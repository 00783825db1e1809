//! What triggers a reload: a change of the config file (written in place, or swapped
//! through a symlink like a Kubernetes ConfigMap), and SIGHUP to the real binary; a broken file
//! is refused, logged with file, line and field, and counted.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::config::Yaml;
use crate::support::echo::EchoBackend;
use crate::support::http as client;
use crate::support::proxy::{ProxyProcess, TestProxy};
use crate::support::tls::TestCa;
use crate::support::ws;
use crate::support::{eventually, until};

/// Listener `public`, an admin listener, and upstream `app` over `backends`.
fn yaml(backends: &[(&str, SocketAddr)]) -> Yaml {
    Yaml::app(|u| u.backends(backends.iter().copied()))
}

/// Replace `path` atomically (write a sibling, rename it over), as editors and tools do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_file_in_place_triggers_one_reload() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let proxy = TestProxy::start(yaml(&[("a", a.addr)])).await;
    proxy.watch_config();
    let admin = proxy.admin();
    assert_eq!(admin.backend_ids("app").await, ["a"]);

    std::fs::write(proxy.config_path(), yaml(&[("a", a.addr), ("b", b.addr)]).build()).expect("write in place");
    admin.wait_generation(2).await;
    assert_eq!(admin.backend_ids("app").await, ["a", "b"]);
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "ok")]), 1.0, "debounced: one reload per edit");
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "error")]), 0.0, "never a half-written file");

    // Touching another file in the directory reloads nothing.
    std::fs::write(proxy.dir().join("unrelated.txt"), "x").expect("write unrelated");
    std::fs::write(proxy.config_path(), yaml(&[("b", b.addr)]).build()).expect("write in place");
    admin.wait_generation(3).await;
    assert_eq!(admin.metrics().await.value("tether_reloads_total", &[("result", "ok")]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_does_not_hold_a_reload_back() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let proxy = TestProxy::start(yaml(&[("a", a.addr)])).await;
    proxy.watch_config();
    let admin = proxy.admin();
    // Something else in the directory (a log file, say) changes every 20 ms, never leaving
    // the debounce a quiet moment.
    let busy = proxy.dir().join("busy.log");
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            for i in 0..2000 {
                std::fs::write(&busy, format!("line {i}\n")).expect("write busy file");
                tokio::select! {
                    // The busy file's pace is the scenario: it never stays quiet for long.
                    _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    });
    std::fs::write(proxy.config_path(), yaml(&[("a", a.addr), ("b", b.addr)]).build()).expect("write in place");
    admin.wait_generation(2).await;
    assert_eq!(admin.backend_ids("app").await, ["a", "b"]);
    stop.cancel();
    writer.await.expect("writer");
    assert_eq!(admin.metrics().await.value("tether_reloads_total", &[("result", "ok")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_triggers_a_reload() {
    use std::os::unix::fs::symlink;
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    // The layout kubelet writes: tether.yaml -> ..data/tether.yaml, ..data -> ..<timestamp>.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01_01_v1")).expect("mkdir");
    std::fs::write(root.join("..2026_01_01_v1/tether.yaml"), yaml(&[("a", a.addr)]).build()).expect("write v1");
    symlink("..2026_01_01_v1", root.join("..data")).expect("..data link");
    symlink("..data/tether.yaml", root.join("tether.yaml")).expect("tether.yaml link");
    let proxy = TestProxy::builder().file(&root.join("tether.yaml")).spawn().await;
    proxy.watch_config();
    let admin = proxy.admin();
    assert_eq!(admin.backend_ids("app").await, ["a"]);

    // An update: new timestamped directory, a new ..data link renamed over the old one, the
    // old directory removed. The file tether.yaml itself is never written.
    std::fs::create_dir(root.join("..2026_01_01_v2")).expect("mkdir");
    std::fs::write(root.join("..2026_01_01_v2/tether.yaml"), yaml(&[("b", b.addr)]).build()).expect("write v2");
    symlink("..2026_01_01_v2", root.join("..data_tmp")).expect("..data_tmp link");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(root.join("..2026_01_01_v1")).expect("remove v1");

    admin.wait_generation(2).await;
    until("a to leave", async || admin.backend_ids("app").await == ["b"]).await;
    assert_eq!(client::get(proxy.addr("public"), "/", &[]).await.text(), "b");
}

/// JSON log lines on the process's stderr.
fn log_lines(proxy: &ProxyProcess) -> Vec<serde_json::Value> {
    proxy.stderr().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_triggers_a_reload_that_rereads_certificates() {
    let a = EchoBackend::start("a").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, first) = ca.write_leaf(dir.path(), "site", &["localhost"]);
    let yaml = Yaml::new()
        .tls_listener("tls", &[("site.crt", "site.key")])
        .admin()
        .route("app")
        .upstream("app", |u| u.backend("a", a.addr));
    let proxy = TestProxy::builder().dir(dir).yaml(yaml).spawn_process().await;
    let admin = proxy.admin();
    let tls = proxy.addr("tls");
    assert_eq!(ca.connect(tls).await.0, first.cert_der);

    // New certificate files; the config text does not change, so only SIGHUP reloads.
    let (_, _, second) = ca.write_leaf(proxy.dir(), "site", &["localhost"]);
    proxy.signal(libc::SIGHUP);
    admin.wait_generation(2).await;
    assert_eq!(ca.connect(tls).await.0, second.cert_der);
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(scrape.value("tether_config_generation", &[]), 2.0);
    let logs = log_lines(&proxy);
    assert!(logs.iter().any(|l| l["message"] == "SIGHUP: reloading the configuration"), "{}", proxy.stderr());
    assert!(logs.iter().any(|l| l["message"] == "configuration reloaded" && l["generation"] == 2));

    proxy.signal(libc::SIGHUP);
    admin.wait_generation(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_logged_and_counted_while_the_old_config_serves() {
    let a = EchoBackend::start("a").await;
    let proxy = TestProxy::builder().yaml(yaml(&[("a", a.addr)])).spawn_process().await;
    let path = proxy.config_path().to_owned();
    let admin = proxy.admin();
    let public = proxy.addr("public");
    let (mut socket, _) = ws::open(public, &[]).await;

    let broken = yaml(&[("a", a.addr)]).build().replace("routes:\n  - upstream: app", "routes:\n  - upstream: nowhere");
    let line = broken.lines().position(|l| l.contains("nowhere")).expect("line") + 1;
    replace_file(&path, &broken);
    let errors = eventually("the refused reload to be logged", async || {
        log_lines(&proxy).into_iter().find(|l| {
            l["level"] == "ERROR" && l["message"] == "configuration reload rejected; the running configuration stays"
        })
    })
    .await;
    let errors = errors["errors"].as_str().expect("errors field").to_owned();
    assert!(
        errors.contains(&format!("{}:{line}:", path.display())) && errors.contains("routes[0].upstream"),
        "the log names file, line and field: {errors}"
    );
    let scrape = admin.metrics().await;
    assert_eq!(scrape.value("tether_reloads_total", &[("result", "error")]), 1.0);
    assert_eq!(scrape.value("tether_config_generation", &[]), 1.0);
    assert_eq!(client::get(public, "/", &[]).await.text(), "a", "the old config serves");
    ws::echo(&mut socket, "still open").await;

    // SIGHUP on the same broken file: refused again, counted again.
    proxy.signal(libc::SIGHUP);
    admin.wait_metric("tether_reloads_total", &[("result", "error")], 2.0).await;
    assert_eq!(admin.generation().await, 1);
    ws::echo(&mut socket, "still open after SIGHUP").await;
}
