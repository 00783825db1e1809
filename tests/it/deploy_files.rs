//! The deployment files parse and agree with each other and with tether: the compose file, the
//! Kubernetes manifests and the Dockerfile name the same services, ports, commands and config
//! paths, their timeouts let every drain finish before a kill, and every config they mount
//! passes the real `tether check`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml::Value;
use tether::config::{Config, JwtKeys, KeySource};

use crate::support::check::{ConfigDir, run_check};
use crate::support::deploy_files::{
    JWKS_FILE_VAR, at, compose, config_map_file, container, duration, example_jwks, find, flag, manifests,
    parse_config, port_of, read, repo_path, service, str_at, strings,
};

/// `tether backend` gives sessions this long to finish their closing handshake after the
/// last scheduled close (`backend::SESSION_CLOSE_GRACE`), before it stops waiting.
const BACKEND_CLOSE_GRACE: Duration = Duration::from_secs(5);

const K8S_NAMESPACE: &str = "tether-demo";

fn compose_config() -> Config {
    let path = repo_path("docker/tether.compose.yaml");
    parse_config(&path, &read("docker/tether.compose.yaml"), &[])
}

/// A Kubernetes config, its JWKS (the Secret's mount in a pod) stood in by the example.
fn k8s_config(file: &str, config_map: &str) -> Config {
    let docs = manifests(file);
    let text = config_map_file(find(&docs, "ConfigMap", config_map), "tether.yaml");
    let jwks = example_jwks();
    parse_config(&repo_path("docker/k8s/tether.yaml"), &text, &[(JWKS_FILE_VAR, jwks.to_str().expect("utf-8"))])
}

/// The config's one verifier, used by its one route: tokens are what name users, never a
/// client's header. Returns the header the verified claim goes to backends in.
fn verified_identity(config: &Config) -> String {
    assert_eq!(config.auth.len(), 1, "one verifier");
    let verifier = &config.auth[0];
    assert!(!verifier.required, "anonymous clients keep working");
    assert_eq!(verifier.identity.claim, "sub");
    assert!(matches!(verifier.jwt.keys, JwtKeys::Files { .. }), "a JWKS file, never a shared secret");
    for route in &config.routes {
        assert_eq!(route.auth.as_deref(), Some(verifier.name.as_str()), "every route verifies tokens");
    }
    verifier.identity.header.as_str().to_owned()
}

/// Users are pinned by the verified subject (anonymous ones by the cookie).
fn assert_pins_by_verified_claim(config: &Config) {
    let affinity = &config.upstreams[0].affinity;
    assert!(
        matches!(affinity.keys[..], [KeySource::VerifiedClaim(ref claim)] if claim == "sub"),
        "{:?}",
        affinity.keys
    );
    assert!(affinity.cookie.is_some(), "anonymous users get the sticky cookie");
}

/// The admin listener is on the loopback: nothing outside the container or pod reaches it.
fn assert_admin_on_loopback(config: &Config) -> u16 {
    let admin = config.admin.as_ref().expect("admin listener");
    assert!(admin.bind.ip().is_loopback(), "admin on {}", admin.bind);
    admin.bind.port()
}

/// An exec probe that GETs `path` from the container's own loopback `port` with bash.
fn assert_loopback_probe(probe: &Value, port: u16, path: &str) {
    let command = strings(at(probe, &["exec", "command"]).unwrap_or_else(|| panic!("an exec probe: {probe:?}")));
    assert_eq!(command[..2], ["bash", "-c"]);
    assert!(command[2].contains(&format!("/dev/tcp/127.0.0.1/{port}")), "{}", command[2]);
    assert!(command[2].contains(&format!("GET {path} ")) && command[2].contains("' 200 '"), "{}", command[2]);
}

fn seconds(value: Option<&Value>) -> Duration {
    Duration::from_secs(value.and_then(Value::as_u64).expect("a whole number of seconds"))
}

#[test]
fn compose_file_wires_redis_two_backends_and_tether_with_the_mounted_config() {
    let compose = compose();
    let names: BTreeSet<&str> =
        compose["services"].as_mapping().expect("services").keys().map(|k| k.as_str().expect("service name")).collect();
    assert_eq!(names, BTreeSet::from(["app1", "app2", "redis", "tether"]));

    // One image, built from the repository's Dockerfile, for every tether subcommand.
    let image = str_at(service(&compose, "tether"), &["image"]).expect("image");
    for name in ["app1", "app2", "tether"] {
        let s = service(&compose, name);
        assert_eq!(str_at(s, &["image"]), Some(image), "{name}");
        assert_eq!(str_at(s, &["build", "dockerfile"]), Some("docker/Dockerfile"), "{name}");
        let context = repo_path("docker").join(str_at(s, &["build", "context"]).expect("build context"));
        assert!(context.join("Cargo.toml").is_file() && context.join("docker/Dockerfile").is_file(), "{name}");
    }

    // tether runs `proxy -c P` with docker/tether.compose.yaml mounted at P, and the JWKS it
    // names mounted where P's relative path leads.
    let tether = service(&compose, "tether");
    let command = strings(&tether["command"]);
    assert_eq!(command[..2], ["proxy", "-c"]);
    let config_path = &command[2];
    let config = compose_config();
    let JwtKeys::Files { path: jwks, .. } = &config.auth[0].jwt.keys else { panic!("a JWKS file") };
    let jwks_relative = jwks.strip_prefix(repo_path("docker")).expect("the JWKS is under docker/");
    let jwks_in_container = Path::new(config_path).parent().expect("config dir").join(jwks_relative);
    let volumes = strings(&tether["volumes"]);
    assert_eq!(
        volumes,
        [
            format!("./tether.compose.yaml:{config_path}:ro"),
            format!("./{}:{}:ro", jwks_relative.display(), jwks_in_container.display())
        ]
    );
    assert_eq!(jwks, &example_jwks(), "the LOCAL USE ONLY example, never baked into the image");

    // Identity is a verified token; pinning follows it.
    let identity_header = verified_identity(&config);
    assert_pins_by_verified_claim(&config);

    // tether has a fixed address on the stack's network: the one address the apps trust.
    let tether_ip: IpAddr = str_at(tether, &["networks", "default", "ipv4_address"])
        .expect("a fixed address for tether")
        .parse()
        .expect("an IP address");
    let subnet: IpNet = str_at(&compose, &["networks", "default", "ipam", "config", "0", "subnet"])
        .expect("a fixed subnet")
        .parse()
        .expect("a CIDR");
    assert!(subnet.contains(&tether_ip), "{tether_ip} outside {subnet}");

    // Every backend in the config is a compose service running `tether backend` on that port,
    // sharing the compose Redis and believing the identity header from tether only.
    let upstream = &config.upstreams[0];
    let ids: Vec<&str> = upstream.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["app1", "app2"]);
    let redis_port: u16 = 6379;
    for backend in &upstream.backends {
        let s = service(&compose, &backend.address.host);
        let args = strings(&s["command"]);
        assert_eq!(args[0], "backend", "{}", backend.id);
        assert_eq!(flag(&args, "--listen").map(port_of), Some(backend.address.port), "{}", backend.id);
        assert_eq!(flag(&args, "--id"), Some(backend.id.as_str()), "instance name = backend id");
        assert_eq!(flag(&args, "--redis"), Some(format!("redis://redis:{redis_port}").as_str()));
        assert!(flag(&args, "--user-header").is_some_and(|h| h.eq_ignore_ascii_case(&identity_header)), "{args:?}");
        let trusted: Vec<&str> = args.windows(2).filter(|w| w[0] == "--trust-proxy").map(|w| w[1].as_str()).collect();
        assert_eq!(trusted, [format!("{tether_ip}/32")], "{}: only tether may name users", backend.id);
        assert!(!args.iter().any(|a| a == "--accept-login"), "{args:?}");
        let depends = s["depends_on"].as_mapping().expect("depends_on");
        assert_eq!(str_at(&s["depends_on"], &["redis", "condition"]), Some("service_healthy"));
        assert_eq!(depends.len(), 1);
    }
    assert_eq!(identity_header, "x-user-id");
    assert_eq!(upstream.health_check.as_ref().map(|h| h.path.as_str()), Some("/readyz"));

    // tether publishes its listener only (the admin listener is the container's loopback),
    // and waits for both backends to start.
    let ports = strings(&tether["ports"]);
    let listen = config.listeners[0].bind.port();
    assert_admin_on_loopback(&config);
    assert_eq!(ports, [format!("{listen}:{listen}")]);
    let depends: BTreeSet<&str> =
        tether["depends_on"].as_mapping().expect("depends_on").keys().filter_map(Value::as_str).collect();
    assert_eq!(depends, BTreeSet::from(["app1", "app2"]));
    // Secrets come from the environment, never from the files.
    assert!(at(tether, &["environment", "TETHER_COOKIE_KEY"]).is_some());
}

#[test]
fn compose_timeouts_let_every_drain_finish_before_the_kill() {
    let compose = compose();
    let config = compose_config();
    let upstream = &config.upstreams[0];
    let health = upstream.health_check.as_ref().expect("health checks");
    for name in ["app1", "app2"] {
        let s = service(&compose, name);
        let args = strings(&s["command"]);
        let delay = duration(flag(&args, "--shutdown-delay").expect("--shutdown-delay"));
        let spread = duration(flag(&args, "--drain-spread").expect("--drain-spread"));
        let grace = duration(str_at(s, &["stop_grace_period"]).expect("stop_grace_period"));
        assert!(grace > upstream.drain.timeout, "{name}: stop_grace_period {grace:?} <= drain.timeout");
        assert!(grace > delay + spread + BACKEND_CLOSE_GRACE, "{name}: {grace:?} cannot cover the backend's drain");
        // tether sees the 503 (one check) well before the backend stops serving.
        assert!(health.interval + health.timeout < delay, "{name}: {delay:?} is shorter than one health check");
    }
    let grace = duration(str_at(service(&compose, "tether"), &["stop_grace_period"]).expect("stop_grace_period"));
    assert!(grace > config.shutdown.timeout, "tether's stop_grace_period {grace:?} <= shutdown.timeout");
}

#[test]
fn compose_healthchecks_probe_readiness_without_curl() {
    let compose = compose();
    let config = compose_config();
    let admin = config.admin.as_ref().expect("admin").bind.port();
    for (name, port) in [("app1", None), ("app2", None), ("tether", Some(admin))] {
        let s = service(&compose, name);
        let test = strings(&s["healthcheck"]["test"]);
        assert_eq!(test[..3], ["CMD", "bash", "-c"], "{name}");
        let port = port.unwrap_or_else(|| port_of(flag(&strings(&s["command"]), "--listen").expect("--listen")));
        assert!(test[3].contains(&format!("/dev/tcp/127.0.0.1/{port}")), "{name}: {}", test[3]);
        assert!(test[3].contains("GET /readyz "), "{name}");
        // Compose interpolates `$`: the script's own variables must be escaped as `$$`.
        assert!(!test[3].replace("$$", "").contains('$'), "{name}: unescaped $ in {}", test[3]);
    }
    let redis = strings(&service(&compose, "redis")["healthcheck"]["test"]);
    assert_eq!(redis, ["CMD", "redis-cli", "ping"]);
    let text = read("docker/docker-compose.test.yml");
    let code = text.lines().filter(|l| !l.trim_start().starts_with('#'));
    assert!(code.clone().all(|l| !l.contains("curl") && !l.contains("wget")), "the image has neither curl nor wget");
}

#[test]
fn compose_file_shows_the_nginx_ip_hash_service_it_replaces() {
    let text = read("docker/docker-compose.test.yml");
    let comments: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert!(comments.iter().any(|l| l.contains("image: nginx")), "no nginx service in the comments");
    assert!(comments.iter().any(|l| l.contains("ip_hash;")), "no ip_hash upstream in the comments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_the_deployment_files_mount_passes_tether_check() {
    let dir = ConfigDir::new();
    let mut files = vec![("docker/tether.compose.yaml".to_owned(), repo_path("docker/tether.compose.yaml"))];
    for (manifest, name) in [
        ("docker/k8s/tether-config.yaml", "tether-config"),
        ("docker/k8s/sidecar/app-with-tether.yaml", "app-sidecar-tether"),
    ] {
        let docs = manifests(manifest);
        let text = config_map_file(find(&docs, "ConfigMap", name), "tether.yaml");
        files.push((format!("{manifest} ({name})"), dir.write(&format!("{name}.yaml"), &text)));
    }
    let jwks = example_jwks();
    for (what, path) in files {
        // The files stand on their own defaults; the only environment is the Kubernetes
        // configs' JWKS path (a Secret's mount in the pod, the example here).
        let env = [(JWKS_FILE_VAR, jwks.to_str().expect("utf-8 path"))];
        let run = run_check(dir.path(), path.to_str().expect("utf-8 path"), &env).await;
        assert_eq!(run.code, Some(0), "{what}: {run:?}");
        assert_eq!(run.stdout, format!("{}: ok\n", path.display()), "{what}");
        // Only the expected warning: the cookie key comes from the environment at run time.
        for line in run.stderr.lines() {
            assert!(
                line.starts_with("warning: ") && line.contains("TETHER_COOKIE_KEY"),
                "{what}: unexpected output {line:?}"
            );
        }
    }
}

#[test]
fn kubernetes_backend_rolls_one_pod_at_a_time_within_its_grace_period() {
    let docs = manifests("docker/k8s/app.yaml");
    let deployment = find(&docs, "Deployment", "app");
    assert_eq!(str_at(deployment, &["spec", "strategy", "type"]), Some("RollingUpdate"));
    assert_eq!(at(deployment, &["spec", "strategy", "rollingUpdate", "maxSurge"]).and_then(Value::as_u64), Some(1));
    assert_eq!(
        at(deployment, &["spec", "strategy", "rollingUpdate", "maxUnavailable"]).and_then(Value::as_u64),
        Some(0)
    );
    let selector = at(deployment, &["spec", "selector", "matchLabels"]).and_then(Value::as_mapping).expect("selector");
    let labels = at(deployment, &["spec", "template", "metadata", "labels"]).expect("pod labels");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector matches the pods");

    let app = container(deployment, "app");
    let args = strings(&app["args"]);
    assert_eq!(args[0], "backend");
    assert!(flag(&args, "--redis").is_some_and(|u| u.starts_with("redis://redis:")), "{args:?}");
    let http = named_port(app, "http");
    assert_eq!(flag(&args, "--listen").map(port_of), Some(http));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(str_at(app, &[probe, "httpGet", "path"]), Some(path), "{probe}");
        assert_eq!(str_at(app, &[probe, "httpGet", "port"]), Some("http"), "{probe}");
    }

    // preStop only pauses; the app's SIGTERM handling does the draining, and the whole
    // sequence plus tether's drain timeout fit in the grace period.
    let pre_stop = strings(at(app, &["lifecycle", "preStop", "exec", "command"]).expect("preStop exec"));
    assert_eq!(pre_stop.len(), 2, "{pre_stop:?}");
    assert_eq!(pre_stop[0], "sleep");
    let pause = Duration::from_secs(pre_stop[1].parse().expect("whole seconds"));
    let delay = duration(flag(&args, "--shutdown-delay").expect("--shutdown-delay"));
    let spread = duration(flag(&args, "--drain-spread").expect("--drain-spread"));
    let grace = seconds(at(deployment, &["spec", "template", "spec", "terminationGracePeriodSeconds"]));
    let tether = k8s_config("docker/k8s/tether-config.yaml", "tether-config");
    let upstream = &tether.upstreams[0];
    assert!(grace > pause + delay + spread + BACKEND_CLOSE_GRACE, "grace {grace:?} cannot cover the drain");
    assert!(grace > upstream.drain.timeout, "grace {grace:?} <= tether's drain.timeout");
    assert!(pause < delay, "preStop must stay shorter than the app's own shutdown delay");
    let health = upstream.health_check.as_ref().expect("health checks");
    assert!(health.interval + health.timeout < delay, "tether must see the 503 before the app stops serving");
    assert!(flag(&args, "--user-header").is_some_and(|h| h.eq_ignore_ascii_case(&verified_identity(&tether))));
    assert_pins_by_verified_claim(&tether);
}

#[test]
fn kubernetes_backend_believes_the_identity_header_from_tether_only() {
    let docs = manifests("docker/k8s/app.yaml");
    let deployment = find(&docs, "Deployment", "app");
    let app = container(deployment, "app");
    let args = strings(&app["args"]);
    let trusted: Vec<IpNet> =
        args.windows(2).filter(|w| w[0] == "--trust-proxy").map(|w| w[1].parse().expect("a CIDR")).collect();
    assert_eq!(trusted.len(), 1, "the pod network, and nothing else: {args:?}");
    assert!(!args.iter().any(|a| a == "--accept-login"), "{args:?}");

    // The client port admits tether's pods only (the kubelet's probes are always admitted);
    // the internal port, the namespace's pods.
    let policy = find(&docs, "NetworkPolicy", "app-ingress");
    let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"]).expect("labels");
    let selected = at(policy, &["spec", "podSelector", "matchLabels"]).and_then(Value::as_mapping).expect("selector");
    assert!(!selected.is_empty() && selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let rules = policy["spec"]["ingress"].as_sequence().expect("ingress rules");
    let tether_pods = at(
        find(&manifests("docker/k8s/tether.yaml"), "Deployment", "tether"),
        &["spec", "template", "metadata", "labels"],
    )
    .expect("tether pod labels")
    .clone();
    let mut http_sources = Vec::new();
    for rule in rules {
        let ports = strings(&Value::Sequence(
            rule["ports"].as_sequence().expect("ports").iter().map(|p| p["port"].clone()).collect(),
        ));
        let from = rule["from"].as_sequence().expect("from");
        if ports.contains(&"http".to_owned()) {
            assert_eq!(ports, ["http"], "the client port has a rule of its own");
            http_sources.extend(from.iter().cloned());
        } else {
            assert_eq!(ports, ["internal"]);
        }
    }
    assert_eq!(http_sources.len(), 1, "{http_sources:?}");
    let source = at(&http_sources[0], &["podSelector", "matchLabels"]).and_then(Value::as_mapping).expect("pods");
    assert!(!source.is_empty() && source.iter().all(|(k, v)| tether_pods.get(k) == Some(v)), "tether's pods only");
    assert!(at(&http_sources[0], &["namespaceSelector"]).is_none() && at(&http_sources[0], &["ipBlock"]).is_none());
}

fn named_port(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| str_at(p, &["name"]) == Some(name)))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn selects(service: &Value, deployment: &Value) -> bool {
    let selector = service["spec"]["selector"].as_mapping().expect("selector");
    let labels = at(deployment, &["spec", "template", "metadata", "labels"]).expect("pod labels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_headless_service_is_the_name_tether_discovers() {
    let docs = manifests("docker/k8s/app.yaml");
    let headless = find(&docs, "Service", "app-headless");
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), Some("None"));
    assert_eq!(at(headless, &["spec", "publishNotReadyAddresses"]).and_then(Value::as_bool), Some(false));
    assert!(selects(headless, find(&docs, "Deployment", "app")));
    let http = headless["spec"]["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| str_at(p, &["name"]) == Some("http")))
        .expect("http port");
    assert_eq!(str_at(http, &["targetPort"]), Some("http"));
    let port = http["port"].as_u64().expect("port");

    let tether = k8s_config("docker/k8s/tether-config.yaml", "tether-config");
    let upstream = &tether.upstreams[0];
    assert!(upstream.backends.is_empty(), "backends come from discovery only");
    let discovery = upstream.discovery.as_ref().expect("discovery");
    assert_eq!(discovery.dns.to_string(), format!("app-headless.{K8S_NAMESPACE}.svc.cluster.local:{port}"));
    assert_eq!(str_at(headless, &["metadata", "namespace"]), Some(K8S_NAMESPACE));
}

#[test]
fn kubernetes_tether_reads_its_config_map_and_secret_and_outlives_its_own_shutdown() {
    let docs = manifests("docker/k8s/tether.yaml");
    let deployment = find(&docs, "Deployment", "tether");
    assert_eq!(at(deployment, &["spec", "replicas"]).and_then(Value::as_u64), Some(2));
    let tether = container(deployment, "tether");
    let args = strings(&tether["args"]);
    assert_eq!(args[..2], ["proxy", "-c"]);

    // -c names the ConfigMap's file in the mounted directory.
    let mount = tether["volumeMounts"].as_sequence().and_then(|m| m.first()).expect("a volume mount");
    let volume = at(deployment, &["spec", "template", "spec", "volumes"])
        .and_then(Value::as_sequence)
        .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
        .expect("the mounted volume");
    let config_map_name = str_at(volume, &["configMap", "name"]).expect("a ConfigMap volume");
    assert_eq!(args[2], format!("{}/tether.yaml", str_at(mount, &["mountPath"]).expect("mountPath")));
    assert!(at(mount, &["subPath"]).is_none(), "subPath mounts never see ConfigMap updates");
    let config_docs = manifests("docker/k8s/tether-config.yaml");
    find(&config_docs, "ConfigMap", config_map_name);
    let config = k8s_config("docker/k8s/tether-config.yaml", config_map_name);

    // Every *_env the config names comes from the Secret the example documents.
    let secret_docs = manifests("docker/k8s/secret.example.yaml");
    let env = tether["env"].as_sequence().expect("env");
    let cookie_env = config.upstreams[0].affinity.cookie.as_ref().and_then(|c| c.key_env.clone()).expect("key_env");
    assert_eq!(env.len(), 1, "{env:?}");
    let entry = env.iter().find(|e| str_at(e, &["name"]) == Some(cookie_env.as_str())).expect("env var");
    let secret = str_at(entry, &["valueFrom", "secretKeyRef", "name"]).expect("from a Secret");
    let key = str_at(entry, &["valueFrom", "secretKeyRef", "key"]).expect("secret key");
    // The example documents the key but carries no usable value.
    assert_eq!(str_at(find(&secret_docs, "Secret", secret), &["stringData", key]), Some(""));

    // The JWKS comes from a Secret volume, mounted where the config's default path points
    // (the example documents it, empty: tether refuses to start on it).
    verified_identity(&config);
    let text = config_map_file(find(&config_docs, "ConfigMap", config_map_name), "tether.yaml");
    let default_jwks = text
        .split(&format!("${{{JWKS_FILE_VAR}:-"))
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("jwks_file defaults to the Secret's mount");
    let jwks_mount = tether["volumeMounts"]
        .as_sequence()
        .and_then(|ms| {
            ms.iter().find(|m| default_jwks.starts_with(&format!("{}/", str_at(m, &["mountPath"]).unwrap_or("-"))))
        })
        .expect("a mount holding the JWKS");
    let jwks_volume = at(deployment, &["spec", "template", "spec", "volumes"])
        .and_then(Value::as_sequence)
        .and_then(|vs| vs.iter().find(|v| v["name"] == jwks_mount["name"]))
        .expect("the JWKS volume");
    let jwks_secret = str_at(jwks_volume, &["secret", "secretName"]).expect("a Secret volume");
    let file = Path::new(default_jwks).file_name().and_then(|f| f.to_str()).expect("file name");
    assert_eq!(str_at(find(&secret_docs, "Secret", jwks_secret), &["stringData", file]), Some(""));
    assert!(at(jwks_mount, &["subPath"]).is_none(), "subPath mounts never see Secret updates");

    // The admin listener is the pod's loopback: exec probes, no admin port to expose.
    let admin = assert_admin_on_loopback(&config);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_loopback_probe(&tether[probe], admin, path);
    }
    let ports = tether["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1, "the client listener only: {ports:?}");
    assert_eq!(named_port(tether, "http"), config.listeners[0].bind.port());
    let service = find(&docs, "Service", "tether");
    assert!(selects(service, deployment));
    assert_eq!(str_at(service, &["spec", "ports", "0", "targetPort"]), Some("http"));

    let grace = seconds(at(deployment, &["spec", "template", "spec", "terminationGracePeriodSeconds"]));
    assert!(grace > config.shutdown.timeout, "grace {grace:?} <= shutdown.timeout");
}

#[test]
fn kubernetes_sidecar_puts_tether_in_front_of_the_app_inside_one_pod() {
    let docs = manifests("docker/k8s/sidecar/app-with-tether.yaml");
    let deployment = find(&docs, "Deployment", "app-sidecar");
    let app = container(deployment, "app");
    let tether = container(deployment, "tether");
    let config = k8s_config("docker/k8s/sidecar/app-with-tether.yaml", "app-sidecar-tether");
    let backends = &config.upstreams[0].backends;
    assert_eq!(backends.len(), 1);
    let listen = flag(&strings(&app["args"]), "--listen").expect("--listen").to_owned();
    assert_eq!(backends[0].address.to_string(), listen, "tether forwards to the app's loopback listener");
    assert!(listen.starts_with("127.0.0.1:"), "the app is reachable through tether only");
    let app_args = strings(&app["args"]);
    assert!(!app_args.iter().any(|a| a == "--trust-proxy"), "the default, loopback, is tether's address here");
    assert!(flag(&app_args, "--user-header").is_some_and(|h| h.eq_ignore_ascii_case(&verified_identity(&config))));
    let admin = assert_admin_on_loopback(&config);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_loopback_probe(&tether[probe], admin, path);
    }
    assert_eq!(strings(&tether["args"])[..2], ["proxy", "-c"]);
    let service = find(&docs, "Service", "app-sidecar");
    assert!(selects(service, deployment));
    assert_eq!(str_at(service, &["spec", "ports", "0", "targetPort"]), Some("http"));
    assert_eq!(named_port(tether, "http"), config.listeners[0].bind.port());
    let grace = seconds(at(deployment, &["spec", "template", "spec", "terminationGracePeriodSeconds"]));
    assert!(grace > config.shutdown.timeout);
}

#[test]
fn kubernetes_manifests_share_one_namespace_image_and_non_root_user() {
    let dir = repo_path("docker/k8s");
    let mut top: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("docker/k8s")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert!(top.remove("kustomization.yaml"));
    let examples: BTreeSet<String> = top.iter().filter(|n| n.ends_with(".example.yaml")).cloned().collect();
    assert_eq!(examples, BTreeSet::from(["secret.example.yaml".to_owned()]));
    let kustomization = manifests("docker/k8s/kustomization.yaml");
    let resources: BTreeSet<String> = strings(&kustomization[0]["resources"]).into_iter().collect();
    assert_eq!(resources, &top - &examples, "kustomization.yaml applies everything but the examples");

    let uid = dockerfile_uid();
    let image =
        str_at(container(find(&manifests("docker/k8s/tether.yaml"), "Deployment", "tether"), "tether"), &["image"])
            .expect("image")
            .to_owned();
    let mut files: Vec<String> = top.iter().map(|n| format!("docker/k8s/{n}")).collect();
    files.push("docker/k8s/sidecar/app-with-tether.yaml".into());
    let mut kinds = BTreeSet::new();
    for file in &files {
        for doc in manifests(file) {
            let kind = str_at(&doc, &["kind"]).expect("kind").to_owned();
            assert!(str_at(&doc, &["apiVersion"]).is_some(), "{file}: {kind} without apiVersion");
            let name = str_at(&doc, &["metadata", "name"]).expect("name");
            if kind == "Namespace" {
                assert_eq!(name, K8S_NAMESPACE);
            } else {
                assert_eq!(str_at(&doc, &["metadata", "namespace"]), Some(K8S_NAMESPACE), "{file}: {kind}/{name}");
            }
            if kind == "Deployment" && name != "redis" {
                let pod = &doc["spec"]["template"]["spec"];
                assert_eq!(at(pod, &["securityContext", "runAsUser"]).and_then(Value::as_u64), Some(uid), "{name}");
                assert_eq!(at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool), Some(true));
                for c in pod["containers"].as_sequence().expect("containers") {
                    assert_eq!(str_at(c, &["image"]), Some(image.as_str()), "{name}: one image for every subcommand");
                }
            }
            kinds.insert(kind);
        }
    }
    let expected = ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "Secret", "Service"];
    assert_eq!(kinds, expected.iter().map(|k| (*k).to_owned()).collect());
}

/// One Dockerfile instruction, with continuation lines joined.
#[derive(Debug)]
struct Instruction {
    stage: usize,
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("docker/Dockerfile");
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        out.push(Instruction { stage, op, args: args.trim().to_owned() });
    }
    out
}

fn json_args(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

fn dockerfile_uid() -> u64 {
    let instructions = dockerfile();
    let last = instructions.iter().map(|i| i.stage).max().expect("stages");
    let user = instructions.iter().rfind(|i| i.op == "USER" && i.stage == last).expect("USER in the final stage");
    user.args.split(':').next().and_then(|u| u.parse().ok()).expect("a numeric uid")
}

#[test]
fn dockerfile_builds_in_release_and_ships_a_checked_config_as_non_root() {
    let instructions = dockerfile();
    let froms: Vec<&Instruction> = instructions.iter().filter(|i| i.op == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(froms[0].args.starts_with("rust:") && froms[0].args.ends_with(" AS build"), "{:?}", froms[0]);
    let last = froms.len();
    let runtime = &froms[last - 1].args;
    assert!(runtime.contains("-slim") || runtime.contains("distroless"), "small runtime image: {runtime}");
    assert!(
        instructions.iter().any(|i| i.stage == 1 && i.op == "RUN" && i.args.contains("cargo build --release --locked")),
        "release build from the lockfile"
    );

    // Everything copied from the context exists and gets past .dockerignore (an allowlist).
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore starts by excluding everything");
    let allowed: Vec<&str> =
        rules.iter().filter_map(|r| r.strip_prefix('!')).map(|r| r.trim_end_matches('/')).collect();
    let mut copied = BTreeSet::new();
    let mut config_dest = None;
    for copy in instructions.iter().filter(|i| i.op == "COPY" && !i.args.starts_with("--from")) {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        let (dest, sources) = words.split_last().expect("COPY src.. dest");
        for src in sources {
            assert!(repo_path(src).exists(), "COPY {src}: no such file");
            assert!(
                allowed.iter().any(|a| src == a || src.starts_with(&format!("{a}/"))),
                "COPY {src} is excluded by .dockerignore"
            );
            copied.insert(src.to_string());
            if *src == "docker/tether.compose.yaml" && copy.stage == last {
                config_dest = Some(dest.to_string());
            }
        }
    }
    // What cargo needs to load the manifest: benches/ too, since Cargo.toml lists benches.
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "src"];
    if read("Cargo.toml").contains("[[bench]]") {
        needed.push("benches");
    }
    for path in needed {
        assert!(copied.contains(path), "the build stage does not copy {path}");
    }

    // The final stage: the shipped config is checked by the binary at build time, with the
    // example JWKS it names bind-mounted for the check only (never copied into the image), the
    // image runs as a non-root user, and `tether` is the entry point of every subcommand.
    let config = config_dest.expect("the final stage copies docker/tether.compose.yaml");
    let final_stage: Vec<&Instruction> = instructions.iter().filter(|i| i.stage == last).collect();
    let check = final_stage.iter().find(|i| i.op == "RUN" && i.args.contains("\"check\"")).expect("RUN tether check");
    let (mount, command) = check.args.split_once(' ').expect("RUN --mount=... [..]");
    assert_eq!(json_args(command.trim()), ["tether", "check", "-c", config.as_str()]);
    let JwtKeys::Files { path: jwks, .. } = &compose_config().auth[0].jwt.keys else { panic!("a JWKS file") };
    let source = jwks.strip_prefix(repo_path("")).expect("in the repository").display().to_string();
    let target =
        Path::new(&config).parent().expect("dir").join(jwks.strip_prefix(repo_path("docker")).expect("docker/"));
    assert_eq!(mount, format!("--mount=type=bind,source={source},target={}", target.display()));
    assert!(allowed.contains(&source.as_str()), "{source} is excluded by .dockerignore");
    assert!(!copied.contains(&source), "the example JWKS must never be part of the image");
    assert_ne!(dockerfile_uid(), 0, "non-root");
    let entrypoint = final_stage.iter().find(|i| i.op == "ENTRYPOINT").expect("ENTRYPOINT");
    assert_eq!(json_args(&entrypoint.args), ["tether"]);
    let cmd = final_stage.iter().find(|i| i.op == "CMD").expect("CMD");
    assert_eq!(json_args(&cmd.args), ["proxy", "-c", config.as_str()]);
    let binary = final_stage.iter().find(|i| i.op == "COPY" && i.args.starts_with("--from=build")).expect("binary");
    assert!(binary.args.ends_with(" /usr/local/bin/tether"), "{binary:?}");
}
