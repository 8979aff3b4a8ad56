//! `jetway inject` table tests.
//!
//! Each case reads `tests/fixtures/inject/<case>.in.yaml` and compares the
//! result with `<case>.out.yaml` (`<case>.legacy.out.yaml` with `--legacy`),
//! document by document as YAML values, so formatting does not matter but
//! every field does. `JETWAY_BLESS=1 cargo test --test inject` rewrites the
//! expected files; review the diff before committing it.
//!
//! The strict Kubernetes validation of the same outputs is in `tests/deploy.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jetway::inject::{inject, InjectError, InjectOptions, DEFAULT_IMAGE};
use serde::Deserialize;
use serde_norway::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn read(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn options(legacy: bool) -> InjectOptions {
    InjectOptions {
        image: DEFAULT_IMAGE.to_string(),
        legacy,
    }
}

/// Successful cases: (fixture, legacy).
const GOLDEN_CASES: &[(&str, bool)] = &[
    ("pod", false),
    ("deployment", false),
    ("statefulset", false),
    ("daemonset", false),
    ("replicaset", false),
    ("job", false),
    ("cronjob", false),
    ("list", false),
    ("existing-init-container", false),
    ("credentials", false),
    ("mixed", false),
    ("already-injected", false),
    ("previous-version", false),
    ("deployment", true),
    ("pod", true),
    ("existing-init-container", true),
];

fn expected_file(case: &str, legacy: bool) -> String {
    if legacy {
        format!("{case}.legacy.out.yaml")
    } else {
        format!("{case}.out.yaml")
    }
}

#[test]
fn every_case_matches_its_expected_output() {
    let bless = std::env::var_os("JETWAY_BLESS").is_some();
    let mut failures = Vec::new();
    for &(case, legacy) in GOLDEN_CASES {
        let input = read(&format!("{case}.in.yaml"));
        let output = inject(&input, &options(legacy))
            .unwrap_or_else(|e| panic!("{case} (legacy {legacy}): {e}"));
        let expected_name = expected_file(case, legacy);
        if bless {
            std::fs::write(fixtures().join(&expected_name), &output).expect("write expected");
            continue;
        }
        let expected = read(&expected_name);
        if documents(&output) != documents(&expected) {
            failures.push(format!(
                "{case} (legacy {legacy}) differs from {expected_name}; got:\n{output}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where the pod spec sits in each kind of workload.
const WORKLOADS: &[(&str, &[&str])] = &[
    ("pod", &["spec"]),
    ("deployment", &["spec", "template", "spec"]),
    ("statefulset", &["spec", "template", "spec"]),
    ("daemonset", &["spec", "template", "spec"]),
    ("replicaset", &["spec", "template", "spec"]),
    ("job", &["spec", "template", "spec"]),
    (
        "cronjob",
        &["spec", "jobTemplate", "spec", "template", "spec"],
    ),
];

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| &v[*key])
}

fn containers<'a>(pod_spec: &'a Value, list: &str) -> Vec<&'a Value> {
    pod_spec[list]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn named<'a>(items: &[&'a Value], name: &str) -> Vec<&'a Value> {
    items
        .iter()
        .copied()
        .filter(|c| c["name"].as_str() == Some(name))
        .collect()
}

/// The fields every injected sidecar must carry, checked on the pod spec.
fn assert_sidecar(case: &str, pod_spec: &Value, list: &str, config_map: &str) {
    let sidecars = named(&containers(pod_spec, list), "jetway");
    assert_eq!(sidecars.len(), 1, "{case}: one jetway in {list}");
    let c = sidecars[0];
    assert_eq!(c["image"], DEFAULT_IMAGE, "{case}");
    assert_eq!(
        c["args"],
        serde_norway::from_str::<Value>(r#"["run", "--config", "/etc/jetway/jetway.yaml"]"#)
            .expect("yaml"),
        "{case}"
    );
    assert_eq!(c["ports"][0]["name"], "jetway-api", "{case}");
    assert_eq!(c["ports"][0]["containerPort"], 4480, "{case}");
    assert_eq!(c["ports"][1]["name"], "jetway-metrics", "{case}");
    assert_eq!(c["ports"][1]["containerPort"], 4481, "{case}");
    assert_probes(case, c);
    assert_eq!(c["resources"]["requests"]["cpu"], "10m", "{case}");
    assert_eq!(c["resources"]["requests"]["memory"], "24Mi", "{case}");
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi", "{case}");
    assert!(
        c["resources"]["limits"].get("cpu").is_none(),
        "{case}: no cpu limit"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{case}");
    assert_eq!(sc["runAsUser"], 65532, "{case}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{case}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{case}");
    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{case}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{case}");
    assert_eq!(c["volumeMounts"][0]["name"], "jetway-config", "{case}");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/jetway", "{case}");

    let volumes: Vec<&Value> = containers(pod_spec, "volumes");
    let config = named(&volumes, "jetway-config");
    assert_eq!(config.len(), 1, "{case}: one jetway-config volume");
    assert_eq!(config[0]["configMap"]["name"], config_map, "{case}");
    assert_eq!(
        config[0]["configMap"]["items"][0]["key"], "jetway.yaml",
        "{case}"
    );
}

/// SPEC section 7: `/readyz` gates the start only; readiness and liveness
/// are on `/healthz`, so a NATS outage keeps the pod in its Services.
fn assert_probes(case: &str, c: &Value) {
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/readyz", "{case}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz", "{case}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{case}");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], "jetway-metrics",
            "{case} {probe}"
        );
    }
    // A slow NATS gets a few minutes before the kubelet restarts the sidecar.
    let startup = &c["startupProbe"];
    let budget = startup["periodSeconds"].as_u64().unwrap_or(0)
        * startup["failureThreshold"].as_u64().unwrap_or(0);
    assert!(budget >= 180, "{case}: startup budget {budget} s");
}

#[test]
fn each_workload_kind_gets_a_native_sidecar() {
    for &(case, path) in WORKLOADS {
        let input = read(&format!("{case}.in.yaml"));
        let before = &documents(&input)[0];
        let output = inject(&input, &options(false)).expect(case);
        let after = &documents(&output)[0];
        let pod_spec = at(after, path);
        let annotations = &at(after, &path[..path.len() - 1])["metadata"]["annotations"];
        let config_map = annotations["jetway.io/config"].as_str().expect(case);
        assert_sidecar(case, pod_spec, "initContainers", config_map);
        let sidecar = named(&containers(pod_spec, "initContainers"), "jetway")[0];
        assert_eq!(sidecar["restartPolicy"], "Always", "{case}");
        // The app containers are exactly as they were.
        assert_eq!(
            pod_spec["containers"],
            at(before, path)["containers"],
            "{case}"
        );
        // Nothing outside the pod spec changed.
        let mut after_without = after.clone();
        let mut before_without = before.clone();
        for v in [&mut after_without, &mut before_without] {
            let parent = path[..path.len() - 1].iter().fold(v, |v, key| &mut v[*key]);
            if let Some(map) = parent.as_mapping_mut() {
                map.remove("spec");
            }
        }
        assert_eq!(after_without, before_without, "{case}");
    }
}

#[test]
fn list_items_are_injected() {
    let output = inject(&read("list.in.yaml"), &options(false)).expect("list");
    let list = &documents(&output)[0];
    assert_eq!(list["kind"], "List");
    let deployment = &list["items"][0];
    assert_sidecar(
        "list",
        at(deployment, &["spec", "template", "spec"]),
        "initContainers",
        "payments-jetway",
    );
    let input = &documents(&read("list.in.yaml"))[0];
    assert_eq!(
        list["items"][1], input["items"][1],
        "the Service is untouched"
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    for &(case, legacy) in GOLDEN_CASES {
        let once = inject(&read(&format!("{case}.in.yaml")), &options(legacy)).expect(case);
        let twice = inject(&once, &options(legacy)).expect(case);
        assert_eq!(
            documents(&twice),
            documents(&once),
            "{case} (legacy {legacy})"
        );
        // Also across modes: a native sidecar is not doubled by a legacy run.
        let other = inject(&once, &options(!legacy)).expect(case);
        assert_eq!(
            documents(&other),
            documents(&once),
            "{case} (legacy {legacy})"
        );
    }
}

#[test]
fn reinjecting_a_previous_versions_output_rewrites_the_probes() {
    // previous-version.in.yaml is what jetway wrote before the probes moved
    // (readiness on /readyz) for deployment.in.yaml and, with --legacy,
    // pod.in.yaml. Re-injected, each is what injecting the original gives
    // today: the probes rewritten, nothing else changed, nothing doubled.
    let input = read("previous-version.in.yaml");
    let old = documents(&input);
    assert_eq!(old.len(), 2);
    let old_native = &old[0]["spec"]["template"]["spec"]["initContainers"][0];
    let old_legacy = &old[1]["spec"]["containers"][1];
    for c in [old_native, old_legacy] {
        assert_eq!(c["name"], "jetway");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    }
    for legacy in [false, true] {
        let again = documents(&inject(&input, &options(legacy)).expect("re-inject"));
        let fresh_native =
            documents(&inject(&read("deployment.in.yaml"), &options(false)).expect("deployment"));
        let fresh_legacy = documents(&inject(&read("pod.in.yaml"), &options(true)).expect("pod"));
        assert_eq!(
            again[0], fresh_native[0],
            "native (run with legacy {legacy})"
        );
        assert_eq!(
            again[1], fresh_legacy[0],
            "legacy (run with legacy {legacy})"
        );
        assert_probes(
            "previous native",
            &again[0]["spec"]["template"]["spec"]["initContainers"][0],
        );
        assert_probes("previous legacy", &again[1]["spec"]["containers"][1]);
    }
}

#[test]
fn unannotated_resources_are_untouched() {
    let input = read("mixed.in.yaml");
    let before = documents(&input);
    let after = documents(&inject(&input, &options(false)).expect("mixed"));
    assert_eq!(before.len(), after.len());
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let name = b["metadata"]["name"].as_str().unwrap_or_default();
        if name == "orders" && b["kind"] == "Deployment" {
            assert_ne!(a, b, "the annotated Deployment changes");
            assert_eq!(a["metadata"]["x-team"], "checkout", "unknown fields kept");
        } else {
            assert_eq!(a, b, "document {} ({name}) unchanged", i + 1);
        }
    }
    // Nothing annotated at all: the same documents come back.
    let plain = read("already-injected.in.yaml");
    assert_eq!(
        documents(&inject(&plain, &options(false)).expect("plain")),
        documents(&plain)
    );
}

#[test]
fn existing_init_containers_run_before_the_sidecar() {
    let output = inject(&read("existing-init-container.in.yaml"), &options(false)).expect("init");
    let spec = at(&documents(&output)[0], &["spec", "template", "spec"]).clone();
    let names: Vec<&str> = containers(&spec, "initContainers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["migrate", "jetway"]);
    assert!(spec["initContainers"][0].get("restartPolicy").is_none());
}

#[test]
fn legacy_flag_adds_a_regular_container() {
    let output = inject(&read("deployment.in.yaml"), &options(true)).expect("legacy");
    let spec = at(&documents(&output)[0], &["spec", "template", "spec"]).clone();
    assert_sidecar("legacy", &spec, "containers", "orders-jetway");
    let sidecar = named(&containers(&spec, "containers"), "jetway")[0];
    assert!(
        sidecar.get("restartPolicy").is_none(),
        "restartPolicy is for init containers only"
    );
    assert!(named(&containers(&spec, "initContainers"), "jetway").is_empty());
    // The app container stays first, so `kubectl logs`/`exec` default to it.
    assert_eq!(spec["containers"][0]["name"], "app");
    // The existing volume is kept, the config volume added after it.
    assert_eq!(spec["volumes"][0]["name"], "cache");
    assert_eq!(spec["volumes"][1]["name"], "jetway-config");
}

#[test]
fn credentials_secret_and_image_annotations() {
    let output = inject(&read("credentials.in.yaml"), &options(false)).expect("credentials");
    let spec = at(&documents(&output)[0], &["spec", "template", "spec"]).clone();
    let sidecar = named(&containers(&spec, "initContainers"), "jetway")[0].clone();
    assert_eq!(sidecar["image"], "registry.internal/jetway:0.1.0-patched");
    assert_eq!(
        sidecar["volumeMounts"][1]["name"],
        "jetway-nats-credentials"
    );
    assert_eq!(
        sidecar["volumeMounts"][1]["mountPath"],
        "/var/run/secrets/jetway"
    );
    let volumes = containers(&spec, "volumes");
    let creds = named(&volumes, "jetway-nats-credentials");
    assert_eq!(
        creds[0]["secret"]["secretName"],
        "shipping-nats-credentials"
    );
    assert_eq!(creds[0]["secret"]["items"][0]["key"], "nats.creds");
}

#[test]
fn image_option_is_used() {
    let opts = InjectOptions {
        image: "example.org/jetway:test".into(),
        legacy: false,
    };
    let output = inject(&read("pod.in.yaml"), &opts).expect("pod");
    assert_eq!(
        documents(&output)[0]["spec"]["initContainers"][0]["image"],
        "example.org/jetway:test"
    );
}

/// Error cases: (fixture, legacy, words the message must contain).
const ERROR_CASES: &[(&str, bool, &[&str])] = &[
    (
        "missing-config",
        false,
        &["jetway.io/config", "Deployment orders", "ConfigMap"],
    ),
    (
        "annotation-on-workload",
        false,
        &["jetway.io/inject", "pod template", "Deployment orders"],
    ),
    ("volume-conflict", false, &["jetway-config", "Pod worker"]),
    ("job", true, &["never complete", "Job backfill"]),
    (
        "cronjob",
        true,
        &["never complete", "CronJob nightly-report"],
    ),
];

#[test]
fn errors_name_the_resource_and_the_fix() {
    for &(case, legacy, words) in ERROR_CASES {
        let err = inject(&read(&format!("{case}.in.yaml")), &options(legacy))
            .expect_err(case)
            .to_string();
        for word in words {
            assert!(err.contains(word), "{case}: {err:?} lacks {word:?}");
        }
    }
}

#[test]
fn missing_config_annotation_is_a_typed_error() {
    let err = inject(&read("missing-config.in.yaml"), &options(false)).expect_err("error");
    assert!(matches!(err, InjectError::MissingConfig { .. }), "{err:?}");
    // An empty value is as good as none.
    let input = read("deployment.in.yaml").replace("orders-jetway", "\"\"");
    let err = inject(&input, &options(false)).expect_err("empty config");
    assert!(matches!(err, InjectError::MissingConfig { .. }), "{err:?}");
}

#[test]
fn documents_come_out_separated() {
    let output = inject(&read("mixed.in.yaml"), &options(false)).expect("mixed");
    assert_eq!(output.matches("\n---\n").count(), 5, "{output}");
    assert!(!output.starts_with("---"));
}

// --- the real binary -------------------------------------------------------

fn jetway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jetway"))
}

#[test]
fn binary_injects_a_file() {
    let path = fixtures().join("deployment.in.yaml");
    let out = jetway()
        .args(["inject", "-f"])
        .arg(&path)
        .output()
        .expect("run jetway");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(documents(&stdout), documents(&read("deployment.out.yaml")));
}

fn run_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    let mut child = jetway()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jetway");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn binary_injects_stdin() {
    // SPEC section 1: `jetway inject [-f FILE|-]`; `-f -` and no file at
    // all read stdin too.
    for args in [&["inject", "-"][..], &["inject", "-f", "-"], &["inject"]] {
        let out = run_with_stdin(args, &read("mixed.in.yaml"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(
            documents(&stdout),
            documents(&read("mixed.out.yaml")),
            "{args:?}"
        );
    }
}

#[test]
fn binary_legacy_and_image_flags() {
    let out = run_with_stdin(
        &[
            "inject",
            "-f",
            "-",
            "--legacy",
            "--image",
            "example.org/jetway:dev",
        ],
        &read("pod.in.yaml"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = &documents(&String::from_utf8(out.stdout).expect("utf-8"))[0];
    assert_eq!(doc["spec"]["containers"][1]["name"], "jetway");
    assert_eq!(
        doc["spec"]["containers"][1]["image"],
        "example.org/jetway:dev"
    );
}

#[test]
fn binary_fails_with_a_message_on_missing_config() {
    let path = fixtures().join("missing-config.in.yaml");
    let out = jetway()
        .args(["inject", "-f"])
        .arg(&path)
        .output()
        .expect("run jetway");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no partial output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jetway.io/config"), "{stderr}");
}
