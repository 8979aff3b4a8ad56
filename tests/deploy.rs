//! Checks of the deployment files: `Dockerfile`, `deploy/**`, `helm/jetway`.
//!
//! There is no Docker engine, cluster or `helm` binary where jetway is built,
//! so everything is checked on the files themselves and with the jetway
//! binary:
//!
//! - every Kubernetes manifest (and the output of `jetway inject`, and the
//!   chart's templates rendered by the small Go-template renderer below) is
//!   deserialised into the `k8s-openapi` types with every ignored field
//!   reported by `serde_ignored`, so a misspelt field name fails;
//! - the CRDs used (ServiceMonitor, PrometheusRule) and kustomizations are
//!   checked the same way against hand-written `deny_unknown_fields` structs
//!   of the fields jetway uses;
//! - references across files hold: labels, port names, volumes, the config
//!   path, ConfigMap keys, kustomization resources, `.Values` paths;
//! - the jetway configs shipped pass `jetway check`;
//! - every metric name and label in the dashboard and the alerts is one
//!   jetway exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value;

// --- files -----------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("invalid yaml: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

// --- strict validation -------------------------------------------------------

/// Deserialises `doc` into `T`, failing on any field `T` does not know.
///
/// k8s-openapi's `Deserialize` impls send unknown fields to
/// `MapAccess::next_value::<IgnoredAny>`, i.e. `deserialize_ignored_any`,
/// which `serde_ignored` intercepts and reports with the field's path.
fn strict<T: DeserializeOwned>(doc: &Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(doc.clone(), |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// The Prometheus Operator fields jetway's manifests use.
mod crd {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        pub endpoints: Vec<Endpoint>,
        pub namespace_selector: Option<NamespaceSelector>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct NamespaceSelector {
        pub any: Option<bool>,
        pub match_names: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Endpoint {
        pub port: String,
        pub path: Option<String>,
        pub interval: Option<String>,
        pub scrape_timeout: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: RuleSpec,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub struct RuleGroup {
        pub name: String,
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rule {
        pub alert: String,
        pub expr: String,
        #[serde(rename = "for")]
        pub for_: String,
        pub labels: BTreeMap<String, String>,
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Kustomization {
        pub api_version: String,
        pub kind: String,
        pub namespace: Option<String>,
        pub resources: Vec<String>,
        pub labels: Option<Vec<Labels>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Labels {
        pub pairs: BTreeMap<String, String>,
        pub include_selectors: Option<bool>,
        pub include_templates: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    pub struct Chart {
        pub api_version: String,
        pub name: String,
        pub description: String,
        #[serde(rename = "type")]
        pub type_: String,
        pub version: String,
        pub app_version: String,
        pub keywords: Option<Vec<String>>,
    }
}

/// Validates one Kubernetes object strictly; `List`s item by item.
fn validate(doc: &Value) -> Result<(), String> {
    let api = str_at(doc, &["apiVersion"]);
    let kind = str_at(doc, &["kind"]);
    let name = str_at(doc, &["metadata", "name"]);
    let result = match (api, kind) {
        ("v1", "ConfigMap") => strict::<ConfigMap>(doc).map(drop),
        ("v1", "Secret") => strict::<Secret>(doc).map(drop),
        ("v1", "Service") => strict::<Service>(doc).map(drop),
        ("v1", "Pod") => strict::<Pod>(doc).map(drop),
        ("apps/v1", "Deployment") => strict::<Deployment>(doc).map(drop),
        ("apps/v1", "StatefulSet") => strict::<StatefulSet>(doc).map(drop),
        ("apps/v1", "DaemonSet") => strict::<DaemonSet>(doc).map(drop),
        ("apps/v1", "ReplicaSet") => strict::<ReplicaSet>(doc).map(drop),
        ("batch/v1", "Job") => strict::<Job>(doc).map(drop),
        ("batch/v1", "CronJob") => strict::<CronJob>(doc).map(drop),
        ("policy/v1", "PodDisruptionBudget") => strict::<PodDisruptionBudget>(doc).map(drop),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            strict::<crd::ServiceMonitor>(doc).map(drop)
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            strict::<crd::PrometheusRule>(doc).map(drop)
        }
        ("v1", "List") => {
            let mut keys: Vec<&str> = doc
                .as_mapping()
                .map(|m| m.keys().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            keys.retain(|k| !["apiVersion", "kind", "items", "metadata"].contains(k));
            if !keys.is_empty() {
                return Err(format!("List: unknown fields {keys:?}"));
            }
            for item in doc["items"].as_sequence().into_iter().flatten() {
                validate(item)?;
            }
            Ok(())
        }
        _ => Err("no validator for this apiVersion and kind".to_string()),
    };
    result.map_err(|e| format!("{api} {kind} {name}: {e}"))
}

fn validate_all(what: &str, docs: &[Value]) {
    let errors: Vec<String> = docs.iter().filter_map(|d| validate(d).err()).collect();
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}

#[test]
fn strict_validation_goes_through_ignored_any() {
    // The premise of every check here: an unknown field at any depth is
    // reported, not silently dropped.
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let typos = [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
        ),
        ("containerPort: 4481", "containerport: 4481"),
        ("matchLabels:", "matchLabel:"),
        ("restartPolicy: Always", "restartpolicy: Always"),
        ("failureThreshold: 150", "failureTreshold: 150"),
        (
            "secretName: orders-nats-credentials",
            "secret: orders-nats-credentials",
        ),
        (
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriod: 45",
        ),
    ];
    for (good, bad) in typos {
        assert!(deployment.contains(good), "{good}");
        let broken = deployment.replacen(good, bad, 1);
        let doc = &documents(&broken)[0];
        let err = validate(doc).expect_err(bad);
        let field = bad.split(':').next().unwrap_or_default();
        assert!(err.contains(field), "{bad}: {err}");
    }
    assert!(validate(&documents(&deployment)[0]).is_ok());

    let monitor = read("deploy/kubernetes/servicemonitor.yaml");
    let broken = monitor.replacen("scrapeTimeout", "scrapeTimout", 1);
    assert!(validate(&documents(&broken)[0]).is_err());
    let broken = monitor.replacen("matchLabels", "matchLabel", 1);
    assert!(validate(&documents(&broken)[0]).is_err());

    let rules = read("deploy/prometheus/alerts.yaml");
    let broken = rules.replacen("for: 5m", "fore: 5m", 1);
    assert!(validate(&documents(&broken)[0]).is_err());

    let unknown_kind = documents("apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n");
    assert!(validate(&unknown_kind[0]).is_err());
}

// --- kustomize ---------------------------------------------------------------

fn kustomization(dir: &str) -> crd::Kustomization {
    let doc = &documents(&read(format!("{dir}/kustomization.yaml")))[0];
    let k: crd::Kustomization = strict(doc).unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    k
}

/// Every file of a kustomization is listed, every listed file exists and is
/// valid; returns the documents.
fn kustomize_resources(dir: &str) -> Vec<Value> {
    let k = kustomization(dir);
    let listed: BTreeSet<&str> = k.resources.iter().map(String::as_str).collect();
    assert_eq!(
        listed.len(),
        k.resources.len(),
        "{dir}: resources listed twice"
    );
    let on_disk: BTreeSet<String> = yaml_files(dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|n| n != "kustomization.yaml")
        // promtool unit tests (`promtool test rules`), not manifests.
        .filter(|n| !n.ends_with(".test.yaml"))
        .collect();
    let listed_owned: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        listed_owned, on_disk,
        "{dir}: kustomization resources and the manifests beside it differ"
    );
    let mut docs = Vec::new();
    for resource in &k.resources {
        let text = read(format!("{dir}/{resource}"));
        let found = documents(&text);
        assert!(!found.is_empty(), "{dir}/{resource} is empty");
        validate_all(&format!("{dir}/{resource}"), &found);
        docs.extend(found);
    }
    docs
}

#[test]
fn kustomize_manifests_are_valid_kubernetes() {
    let docs = kustomize_resources("deploy/kubernetes");
    let kinds: BTreeSet<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
    for kind in ["ConfigMap", "Deployment", "Service", "ServiceMonitor"] {
        assert!(kinds.contains(kind), "deploy/kubernetes has a {kind}");
    }
    let docs = kustomize_resources("deploy/prometheus");
    assert_eq!(str_at(&docs[0], &["kind"]), "PrometheusRule");
}

#[test]
fn kustomize_build_works_when_kubectl_is_there() {
    // An extra check on machines with kubectl; the file checks above are the
    // ones that always run.
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/kubernetes"))
        .output()
    else {
        eprintln!("kubectl not found: skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8_lossy(&out.stdout));
    validate_all("kubectl kustomize deploy/kubernetes", &docs);
    assert_eq!(docs.len(), 4);
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| str_at(d, &["kind"]) == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn seq(v: &Value) -> Vec<&Value> {
    v.as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_norway::from_value(v.clone()).unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// Cross-references inside a pod spec: probe ports and volume mounts exist.
fn check_pod_spec(what: &str, spec: &Value) {
    check_pod_spec_with(what, spec, &[]);
}

/// The same, with volumes that come from elsewhere (a StatefulSet's claims).
fn check_pod_spec_with(what: &str, spec: &Value, claims: &[&str]) {
    let containers: Vec<&Value> = seq(&spec["initContainers"])
        .into_iter()
        .chain(seq(&spec["containers"]))
        .collect();
    let volumes: BTreeSet<&str> = seq(&spec["volumes"])
        .iter()
        .filter_map(|v| v["name"].as_str())
        .chain(claims.iter().copied())
        .collect();
    let mut port_names = BTreeSet::new();
    for c in &containers {
        let cname = str_at(c, &["name"]);
        for p in seq(&c["ports"]) {
            let name = str_at(p, &["name"]);
            assert!(name.len() <= 15, "{what}/{cname}: port name {name} over 15");
            assert!(port_names.insert(name), "{what}: port name {name} twice");
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                let own: Vec<&str> = seq(&c["ports"])
                    .iter()
                    .map(|p| str_at(p, &["name"]))
                    .collect();
                assert!(own.contains(&port), "{what}/{cname}: {probe} port {port}");
            }
        }
        for m in seq(&c["volumeMounts"]) {
            let name = str_at(m, &["name"]);
            assert!(volumes.contains(name), "{what}/{cname}: no volume {name}");
        }
    }
    for c in seq(&spec["initContainers"]) {
        if str_at(c, &["name"]) == "jetway" {
            assert_eq!(
                str_at(c, &["restartPolicy"]),
                "Always",
                "{what}: native sidecar"
            );
        }
    }
}

/// The `jetway.yaml` of a ConfigMap, parsed.
fn jetway_config(config_map: &Value) -> (String, Value) {
    let text = str_at(config_map, &["data", "jetway.yaml"]).to_string();
    assert!(!text.is_empty(), "ConfigMap has a jetway.yaml key");
    let value = serde_norway::from_str(&text).expect("jetway.yaml is yaml");
    (text, value)
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("listen address {listen}"))
}

/// The config, the ConfigMap, the Secret mount and the ports agree.
fn check_sidecar_wiring(what: &str, pod_spec: &Value, config_maps: &[&Value]) {
    let sidecar = seq(&pod_spec["initContainers"])
        .into_iter()
        .chain(seq(&pod_spec["containers"]))
        .find(|c| str_at(c, &["name"]) == "jetway")
        .unwrap_or_else(|| panic!("{what}: no jetway container"));
    let volume = seq(&pod_spec["volumes"])
        .into_iter()
        .find(|v| str_at(v, &["name"]) == "jetway-config")
        .unwrap_or_else(|| panic!("{what}: no jetway-config volume"));
    let cm_name = str_at(volume, &["configMap", "name"]);
    let cm = config_maps
        .iter()
        .find(|c| str_at(c, &["metadata", "name"]) == cm_name)
        .unwrap_or_else(|| panic!("{what}: no ConfigMap {cm_name}"));
    let (_, config) = jetway_config(cm);

    // The config file the container is told to read is the one mounted.
    let args: Vec<&str> = seq(&sidecar["args"])
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        args,
        ["run", "--config", "/etc/jetway/jetway.yaml"],
        "{what}"
    );
    let mount = seq(&sidecar["volumeMounts"])
        .into_iter()
        .find(|m| str_at(m, &["name"]) == "jetway-config")
        .expect("config mount");
    assert_eq!(str_at(mount, &["mountPath"]), "/etc/jetway", "{what}");

    let ports: BTreeMap<&str, u64> = seq(&sidecar["ports"])
        .iter()
        .map(|p| {
            (
                str_at(p, &["name"]),
                p["containerPort"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let metrics = config["metrics"]["listen"]
        .as_str()
        .unwrap_or("0.0.0.0:4481");
    assert_eq!(
        ports["jetway-metrics"],
        u64::from(port_of(metrics)),
        "{what}"
    );
    let api = config["api"]["listen"].as_str().unwrap_or("127.0.0.1:4480");
    assert_eq!(ports["jetway-api"], u64::from(port_of(api)), "{what}");

    // A credentials file in the config lives in the mounted Secret.
    if let Some(creds) = config["nats"]["credentials_file"].as_str() {
        let mount = seq(&sidecar["volumeMounts"])
            .into_iter()
            .find(|m| str_at(m, &["name"]) == "jetway-nats-credentials")
            .unwrap_or_else(|| panic!("{what}: credentials_file but no Secret mounted"));
        let dir = str_at(mount, &["mountPath"]);
        let file = creds
            .strip_prefix(&format!("{dir}/"))
            .unwrap_or_else(|| panic!("{what}: {creds} outside {dir}"));
        let volume = seq(&pod_spec["volumes"])
            .into_iter()
            .find(|v| str_at(v, &["name"]) == "jetway-nats-credentials")
            .expect("credentials volume");
        let paths: Vec<&str> = seq(&volume["secret"]["items"])
            .iter()
            .map(|i| str_at(i, &["path"]))
            .collect();
        assert!(
            paths.contains(&file),
            "{what}: {file} not in the Secret's items"
        );
    }
}

#[test]
fn kustomize_example_is_wired_together() {
    let docs = kustomize_resources("deploy/kubernetes");
    let deployment = find(&docs, "Deployment");
    let service = find(&docs, "Service");
    let monitor = find(&docs, "ServiceMonitor");
    let config_maps: Vec<&Value> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == "ConfigMap")
        .collect();
    let pod = &deployment["spec"]["template"];
    check_pod_spec("deployment", &pod["spec"]);
    check_sidecar_wiring("deployment", &pod["spec"], &config_maps);
    assert_eq!(str_at(deployment, &["metadata", "name"]), "orders");

    let pod_labels = labels(&pod["metadata"]["labels"]);
    let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
    assert!(is_subset(&selector, &pod_labels), "Deployment selector");
    // The metrics Service selects the pods and targets the sidecar's port.
    assert!(
        is_subset(&labels(&service["spec"]["selector"]), &pod_labels),
        "Service selector"
    );
    let sidecar_ports: Vec<&str> = seq(&pod["spec"]["initContainers"])
        .iter()
        .flat_map(|c| seq(&c["ports"]))
        .map(|p| str_at(p, &["name"]))
        .collect();
    let service_ports: Vec<&str> = seq(&service["spec"]["ports"])
        .iter()
        .map(|p| str_at(p, &["name"]))
        .collect();
    for p in seq(&service["spec"]["ports"]) {
        let target = str_at(p, &["targetPort"]);
        assert!(
            sidecar_ports.contains(&target),
            "Service targetPort {target}"
        );
    }
    // The ServiceMonitor selects the Service and scrapes a port it has.
    let service_labels = labels(&service["metadata"]["labels"]);
    let wanted = labels(&monitor["spec"]["selector"]["matchLabels"]);
    assert!(
        is_subset(&wanted, &service_labels),
        "ServiceMonitor selector"
    );
    for e in seq(&monitor["spec"]["endpoints"]) {
        assert!(
            service_ports.contains(&str_at(e, &["port"])),
            "ServiceMonitor port"
        );
        assert_eq!(str_at(e, &["path"]), "/metrics");
    }
}

fn remove_jetway(pod_spec: &mut Value) {
    let Some(map) = pod_spec.as_mapping_mut() else {
        return;
    };
    for list in ["initContainers", "containers", "volumes"] {
        if let Some(Value::Sequence(items)) = map.get_mut(list) {
            items.retain(|c| !str_at(c, &["name"]).starts_with("jetway"));
            if items.is_empty() {
                map.remove(list);
            }
        }
    }
}

#[test]
fn kustomize_example_is_what_inject_adds() {
    // The hand-written sidecar of the example and the one `jetway inject`
    // writes must never drift apart.
    let text = read("deploy/kubernetes/deployment.yaml");
    let original = documents(&text).remove(0);
    let mut bare = original.clone();
    remove_jetway(&mut bare["spec"]["template"]["spec"]);
    let bare_text = serde_norway::to_string(&bare).expect("yaml");
    let opts = jetway::inject::InjectOptions::default();
    let injected = jetway::inject::inject(&bare_text, &opts).expect("inject");
    assert_eq!(documents(&injected)[0], original, "got:\n{injected}");
}

// --- jetway check on every shipped config ------------------------------------

/// Runs `jetway check` on a config. Files it names under the pod's mount
/// points (the NATS credentials) are stood in for by empty temporary files,
/// since jetway checks that they exist.
fn jetway_check_output(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config.to_string();
    let parsed: Value = serde_norway::from_str(&config).expect("config is yaml");
    for key in ["credentials_file", "nkey_seed_file"] {
        if let Some(file) = parsed["nats"][key].as_str() {
            let stand_in = dir.path().join(key);
            std::fs::write(&stand_in, "").expect("write stand-in");
            config = config.replace(file, &stand_in.display().to_string());
        }
    }
    let path = dir.path().join("jetway.yaml");
    std::fs::write(&path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_jetway"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run jetway check")
}

fn jetway_check(what: &str, config: &str) {
    let out = jetway_check_output(config);
    assert!(
        out.status.success(),
        "{what}: jetway check failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_configs_pass_jetway_check() {
    let docs = kustomize_resources("deploy/kubernetes");
    let (text, _) = jetway_config(find(&docs, "ConfigMap"));
    jetway_check("deploy/kubernetes/configmap.yaml", &text);
    let values: Value = serde_norway::from_str(&read("helm/jetway/values.yaml")).expect("values");
    let config = serde_norway::to_string(&values["config"]).expect("yaml");
    jetway_check("helm/jetway/values.yaml config", &config);
}

#[test]
fn jetway_check_rejects_a_misspelt_key() {
    // Makes sure the test above can fail: jetway refuses unknown keys.
    let docs = kustomize_resources("deploy/kubernetes");
    let (text, _) = jetway_config(find(&docs, "ConfigMap"));
    assert!(jetway_check_output(&text).status.success());
    let broken = text.replacen("max_in_flight", "max_inflight", 1);
    assert_ne!(broken, text);
    let out = jetway_check_output(&broken);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_inflight"));
}

// --- inject output ---------------------------------------------------------------

#[test]
fn inject_output_is_valid_kubernetes() {
    let dir = root().join("tests/fixtures/inject");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // mixed.* carries unknown fields and a CRD on purpose (they must
        // pass through inject untouched).
        if !name.ends_with(".out.yaml") || name.starts_with("mixed") {
            continue;
        }
        let docs = documents(&read(&path));
        validate_all(name, &docs);
        for doc in &docs {
            let claims: Vec<&str> = seq(&doc["spec"]["volumeClaimTemplates"])
                .iter()
                .map(|c| str_at(c, &["metadata", "name"]))
                .collect();
            for (path, spec) in pod_specs(doc) {
                check_pod_spec_with(&format!("{name} {path}"), spec, &claims);
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} outputs found");
    // The mixed case: everything but the deliberate unknowns is valid.
    let docs = documents(&read("tests/fixtures/inject/mixed.out.yaml"));
    let known: Vec<Value> = docs
        .into_iter()
        .filter(|d| str_at(d, &["kind"]) != "Widget")
        .map(|mut d| {
            if let Some(meta) = d["metadata"].as_mapping_mut() {
                meta.remove("x-team");
            }
            d
        })
        .collect();
    validate_all("mixed.out.yaml", &known);
}

/// The pod specs of a workload (or of a List's items).
fn pod_specs(doc: &Value) -> Vec<(String, &Value)> {
    let spec = match str_at(doc, &["kind"]) {
        "Pod" => &doc["spec"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "List" => {
            return seq(&doc["items"]).into_iter().flat_map(pod_specs).collect();
        }
        _ => &doc["spec"]["template"]["spec"],
    };
    if spec.is_mapping() {
        vec![(str_at(doc, &["metadata", "name"]).to_string(), spec)]
    } else {
        vec![]
    }
}

// --- metrics: dashboard and alerts ---------------------------------------------------

/// SPEC section 7: the metrics jetway exports, with their labels.
const SPEC_METRICS: &[(&str, &str, &[&str])] = &[
    ("jetway_build_info", "gauge", &["version"]),
    ("jetway_nats_connected", "gauge", &[]),
    ("jetway_nats_reconnects_total", "counter", &[]),
    ("jetway_publish_total", "counter", &["stream", "outcome"]),
    ("jetway_publish_duration_seconds", "histogram", &["stream"]),
    (
        "jetway_deliveries_total",
        "counter",
        &["subscription", "outcome"],
    ),
    (
        "jetway_delivery_duration_seconds",
        "histogram",
        &["subscription"],
    ),
    (
        "jetway_delivery_latency_seconds",
        "histogram",
        &["subscription"],
    ),
    ("jetway_deliveries_in_flight", "gauge", &["subscription"]),
    ("jetway_consumer_pending", "gauge", &["subscription"]),
    ("jetway_consumer_ack_pending", "gauge", &["subscription"]),
    (
        "jetway_consumer_recreated_total",
        "counter",
        &["subscription"],
    ),
    ("jetway_stream_warnings", "gauge", &["stream"]),
    (
        "jetway_dead_letters_total",
        "counter",
        &["subscription", "reason"],
    ),
    ("jetway_endpoint_up", "gauge", &["subscription"]),
    ("jetway_trace_spans_exported_total", "counter", &[]),
    ("jetway_trace_spans_dropped_total", "counter", &["reason"]),
];

/// Label values SPEC section 7 fixes.
const OUTCOMES: &[&str] = &[
    "ok",
    "duplicate",
    "invalid",
    "unauthorized",
    "forbidden",
    "no_stream",
    "conflict",
    "too_large",
    "overloaded",
    "unavailable",
    "timeout",
    "success",
    "retry",
    "dead_letter",
];
const REASONS: &[&str] = &["rejected", "exhausted"];

/// Labels Prometheus adds to every series scraped through a ServiceMonitor,
/// and the histogram bucket label.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "job",
    "pod",
    "service",
    "container",
    "endpoint",
    "instance",
    "le",
];

/// The metric names jetway exports, as a scrape of /metrics shows them
/// (histograms as their `_bucket`, `_sum` and `_count` series).
///
/// Taken from SPEC section 7; `every_metric_in_dashboard_and_alerts_is_in_a_live_scrape`
/// checks the same names against a running jetway.
fn exported_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind, _) in SPEC_METRICS {
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// Every PromQL expression of the dashboard (panels and variables) and of the
/// alert rules, with where it comes from.
fn deploy_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/jetway.json")).expect("dashboard json");
    fn panels(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("dashboard panel {title:?}"), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dashboard["panels"], &mut exprs);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or_default();
            // label_values(<selector>, <label>)
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query {q}"));
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            exprs.push((
                format!("dashboard variable {}", var["name"]),
                format!("sum by ({}) ({selector})", label.trim()),
            ));
        }
    }
    for rule in alert_rules() {
        exprs.push((format!("alert {}", rule.alert), rule.expr));
    }
    exprs
}

fn alert_rules() -> Vec<crd::Rule> {
    let doc = &documents(&read("deploy/prometheus/alerts.yaml"))[0];
    let rule: crd::PrometheusRule = strict(doc).expect("PrometheusRule");
    rule.spec.groups.into_iter().flat_map(|g| g.rules).collect()
}

const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "topk",
    "bottomk",
    "quantile",
    "stddev",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "idelta",
    "changes",
    "resets",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "absent",
    "vector",
    "scalar",
    "time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "predict_linear",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
];

/// One PromQL expression taken apart: metric names, label names, and the
/// values of `label=~"a|b"` matchers.
#[derive(Default, Debug)]
struct PromQl {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    matchers: Vec<(String, Vec<String>)>,
}

fn parse_promql(expr: &str) -> PromQl {
    let mut out = PromQl::default();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut grouping = false; // inside by (...) / without (...) / on (...)
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '}')
                .map(|p| i + p)
                .expect("}");
            let body: String = chars[i + 1..end].iter().collect();
            for m in split_matchers(&body) {
                let (name, value) = m
                    .split_once("=~")
                    .or_else(|| m.split_once("!~"))
                    .or_else(|| m.split_once("!="))
                    .or_else(|| m.split_once('='))
                    .unwrap_or_else(|| panic!("matcher {m:?} in {expr}"));
                let name = name.trim().to_string();
                let value = value.trim().trim_matches('"');
                out.labels.insert(name.clone());
                if !value.contains('$') {
                    out.matchers
                        .push((name, value.split('|').map(str::to_owned).collect()));
                }
            }
            i = end + 1;
        } else if c == '[' {
            i += chars[i..].iter().position(|&c| c == ']').expect("]") + 1;
        } else if c == '"' {
            i += 1 + chars[i + 1..].iter().position(|&c| c == '"').expect("\"") + 1;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                grouping = true;
            } else if grouping {
                out.labels.insert(word);
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                out.metrics.insert(word);
            }
        } else {
            if c == ')' {
                grouping = false;
            }
            i += 1;
        }
    }
    out
}

fn split_matchers(body: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in body.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Every metric name used in the dashboard and in the alert rules.
fn metric_names_in_deploy_files() -> BTreeSet<String> {
    deploy_expressions()
        .iter()
        .flat_map(|(_, e)| parse_promql(e).metrics)
        .collect()
}

#[test]
fn every_metric_in_dashboard_and_alerts_is_exported() {
    let exported = exported_metric_names();
    let used = metric_names_in_deploy_files();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "not exported by jetway: {unknown:?}\n(exported: {exported:?})"
    );
    // The dashboard shows every metric of SPEC section 7.
    let base = |n: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(n)
            .to_string()
    };
    let used_base: BTreeSet<String> = used.iter().map(|n| base(n)).collect();
    for (name, _, _) in SPEC_METRICS {
        assert!(
            used_base.contains(*name),
            "{name} is not on the dashboard or in an alert"
        );
    }
}

/// The series names a running jetway exports after some traffic.
async fn scraped_metric_names() -> BTreeSet<String> {
    use common::*;
    let (_nats, endpoint, sidecar) = start_one_subscription().await;
    assert_eq!(sidecar.publish("orders.created", b"x").await.status(), 200);
    endpoint.wait_for(1).await;
    let text = eventually("delivery latency observed", || {
        let s = &sidecar;
        async move {
            let t = s.metrics_text().await;
            t.contains("jetway_delivery_latency_seconds_count")
                .then_some(t)
        }
    })
    .await;
    sidecar.stop().await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboard_and_alerts_is_in_a_live_scrape() {
    let scraped = scraped_metric_names().await;
    let used = metric_names_in_deploy_files();
    let missing: Vec<&String> = used.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "used in deploy/ but not exported by a running jetway: {missing:?}\n(scraped: {scraped:?})"
    );
    // The SPEC list above and the live scrape agree.
    let spec = exported_metric_names();
    let not_live: Vec<&String> = spec.difference(&scraped).collect();
    assert!(
        not_live.is_empty(),
        "SPEC metrics missing from /metrics: {not_live:?}"
    );
}

#[test]
fn labels_and_label_values_are_the_exported_ones() {
    let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for (_, _, labels) in SPEC_METRICS {
        known.extend(labels.iter().copied());
    }
    for (what, expr) in deploy_expressions() {
        let q = parse_promql(&expr);
        for label in &q.labels {
            assert!(
                known.contains(label.as_str()),
                "{what}: label {label} in {expr}"
            );
        }
        for (label, values) in &q.matchers {
            let allowed: &[&str] = match label.as_str() {
                "outcome" => OUTCOMES,
                "reason" => REASONS,
                _ => continue,
            };
            for v in values {
                assert!(
                    allowed.contains(&v.as_str()),
                    "{what}: {label}=\"{v}\" in {expr}"
                );
            }
        }
    }
}

#[test]
fn promql_parser_catches_renames() {
    // The checks above fail when a name changes.
    let q = parse_promql(
        r#"sum by (namespace, subscription) (rate(jetway_deliverys_total{outcome=~"success|retri", subscription=~"$subscription"}[5m]))"#,
    );
    assert_eq!(
        q.metrics,
        BTreeSet::from(["jetway_deliverys_total".to_string()])
    );
    assert!(q.labels.contains("namespace") && q.labels.contains("outcome"));
    assert_eq!(
        q.matchers,
        vec![(
            "outcome".to_string(),
            vec!["success".to_string(), "retri".to_string()]
        )]
    );
    let q =
        parse_promql("histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval])))");
    assert_eq!(q.metrics, BTreeSet::from(["x_bucket".to_string()]));
    assert!(!exported_metric_names().contains("jetway_deliverys_total"));
}

#[test]
fn dashboard_has_the_expected_panels_and_variables() {
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/jetway.json")).expect("dashboard json");
    assert_eq!(d["uid"], "jetway");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "namespace", "job", "stream", "subscription"] {
        assert!(vars.contains(&v), "variable ${v}");
    }
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    let mut uses_subscription = 0;
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id"
        );
        titles.push(p["title"].as_str().unwrap_or_default().to_lowercase());
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap_or_default();
            if e.contains("subscription=~\"$subscription\"") {
                uses_subscription += 1;
            }
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    assert!(uses_subscription >= 5, "panels filter by $subscription");
    for wanted in [
        "publish rate by outcome",
        "publish latency",
        "delivery rate by outcome",
        "consumer lag",
        "end-to-end latency",
        "dead letters",
        "endpoints up",
        "nats connection",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "panel {wanted:?}");
    }
}

#[test]
fn alerts_have_runbooks_in_the_deploy_readme() {
    let readme = read("deploy/README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for wanted in [
        "JetwayDeadLettersGrowing",
        "JetwayConsumerLagGrowing",
        "JetwayEndpointDown",
        "JetwayNatsDisconnected",
        "JetwayPublishErrors",
    ] {
        assert!(names.contains(wanted), "alert {wanted}");
    }
    for r in &rules {
        for key in ["summary", "description", "runbook"] {
            assert!(r.annotations.contains_key(key), "{}: {key}", r.alert);
        }
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{}",
            r.alert
        );
        assert!(r.for_.ends_with('m'), "{}: for {}", r.alert, r.for_);
        let anchor = format!("deploy/README.md#{}", r.alert.to_lowercase());
        assert!(
            r.annotations["runbook"].contains(&anchor),
            "{}: runbook link",
            r.alert
        );
        assert!(
            anchors.contains(&r.alert.to_lowercase()),
            "{}: no section in deploy/README.md",
            r.alert
        );
    }
}

#[test]
fn chart_rules_equal_the_deploy_alerts() {
    let deploy = &documents(&read("deploy/prometheus/alerts.yaml"))[0]["spec"];
    let chart: Value =
        serde_norway::from_str(&read("helm/jetway/files/rules.yaml")).expect("rules");
    assert_eq!(&chart, deploy);
}

// --- NATS values -----------------------------------------------------------------

#[test]
fn nats_values_make_a_three_node_jetstream_cluster() {
    let v: Value = serde_norway::from_str(&read("deploy/nats/values.yaml")).expect("yaml");
    let c = &v["config"];
    assert_eq!(c["cluster"]["enabled"], true);
    assert_eq!(c["cluster"]["replicas"], 3);
    assert_eq!(c["jetstream"]["enabled"], true);
    assert_eq!(c["jetstream"]["fileStore"]["enabled"], true);
    assert_eq!(c["jetstream"]["fileStore"]["pvc"]["enabled"], true);
    assert_eq!(c["jetstream"]["memoryStore"]["enabled"], false);
    // Where the examples point jetway.
    let docs = kustomize_resources("deploy/kubernetes");
    let (_, config) = jetway_config(find(&docs, "ConfigMap"));
    let url = config["nats"]["url"].as_str().expect("nats.url");
    assert!(url.starts_with("nats://nats.nats.svc"), "{url}");
    assert_eq!(
        config["streams"][0]["replicas"], 3,
        "R3 on a 3-node cluster"
    );
}

// --- Dockerfile ------------------------------------------------------------------

/// The `cargo build` commands of a text (comment lines skipped), as sets of
/// arguments.
fn cargo_builds(text: &str) -> Vec<BTreeSet<String>> {
    text.replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            l.split_once("cargo build")
                .map(|(_, rest)| rest.to_string())
        })
        .map(|rest| {
            let end = rest
                .find(['`', '&', ';', '|', '#', ')'])
                .unwrap_or(rest.len());
            rest[..end].split_whitespace().map(str::to_owned).collect()
        })
        .collect()
}

#[test]
fn dockerfile_builds_what_the_readme_builds() {
    let dockerfile = read("Dockerfile");
    let builds = cargo_builds(&dockerfile);
    assert_eq!(
        builds.len(),
        1,
        "one cargo build in the Dockerfile: {builds:?}"
    );
    let docker = &builds[0];
    for flag in ["--release", "--locked"] {
        assert!(docker.contains(flag), "Dockerfile: cargo build {flag}");
    }
    let readme = read("README.md");
    let readme_builds = cargo_builds(&readme);
    assert!(
        readme_builds.iter().any(|b| b == docker),
        "README.md has no `cargo build {}` (it has {readme_builds:?})",
        docker.iter().cloned().collect::<Vec<_>>().join(" ")
    );
}

#[test]
fn dockerfile_runs_jetway_as_non_root() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, rest)| (i.to_uppercase(), rest.trim().to_string()))
        .collect();
    let get = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    let froms = get("FROM");
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    // The builder's Rust is at least the crate's rust-version.
    let builder = froms[0].split_whitespace().next().unwrap_or_default();
    let rust = builder
        .strip_prefix("rust:")
        .and_then(|t| t.split('-').next())
        .expect("rust:<version> builder");
    let cargo_toml = read("Cargo.toml");
    let msrv = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version"))
        .map(|l| l.trim_start_matches([' ', '=']).trim_matches([' ', '"']))
        .expect("rust-version in Cargo.toml");
    let parse = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    assert!(parse(rust) >= parse(msrv), "builder rust {rust} < {msrv}");
    assert!(
        builder.ends_with("-bookworm"),
        "glibc of the runtime (debian12)"
    );
    assert!(
        froms[1].starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "{}",
        froms[1]
    );
    assert_eq!(get("USER"), ["65532:65532"]);
    assert_eq!(get("ENTRYPOINT"), [r#"["/usr/local/bin/jetway"]"#]);
    assert_eq!(
        get("CMD"),
        [r#"["run", "--config", "/etc/jetway/jetway.yaml"]"#]
    );
    assert!(get("HEALTHCHECK").is_empty(), "Kubernetes probes do that");
    assert!(get("COPY").iter().any(|c| c.contains("--from=build")));

    // Nothing the build needs is left out of the context.
    let ignore = read(".dockerignore");
    for line in ignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for needed in ["src", "Cargo.toml", "Cargo.lock"] {
            assert!(
                !line.trim_matches('/').eq(needed) && line != "*",
                ".dockerignore drops {needed}"
            );
        }
    }
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

// --- Helm chart ----------------------------------------------------------------------

const CHART: &str = "helm/jetway";

fn chart_values() -> Value {
    serde_norway::from_str(&read(format!("{CHART}/values.yaml"))).expect("values.yaml")
}

fn templates() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(root().join(CHART).join("templates"))
        .expect("templates")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            (name, read(&p))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn chart_metadata_is_consistent() {
    let doc: Value =
        serde_norway::from_str(&read(format!("{CHART}/Chart.yaml"))).expect("Chart.yaml");
    let chart: crd::Chart = strict(&doc).expect("Chart.yaml fields");
    assert_eq!(chart.api_version, "v2");
    assert_eq!(chart.name, "jetway");
    assert_eq!(chart.type_, "application");
    let values = chart_values();
    assert_eq!(values["image"]["tag"], chart.app_version.as_str());
    let default = format!(
        "{}:{}",
        str_at(&values, &["image", "repository"]),
        chart.app_version
    );
    assert_eq!(
        default,
        jetway::inject::DEFAULT_IMAGE,
        "chart and inject default image"
    );
    let cargo_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("version in Cargo.toml");
    assert_eq!(
        chart.app_version, cargo_version,
        "appVersion is jetway's version"
    );
    assert!(
        jetway::inject::DEFAULT_IMAGE.ends_with(&format!(":{cargo_version}")),
        "DEFAULT_IMAGE follows the crate version"
    );
}

fn schema_validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&read(format!("{CHART}/values.schema.json"))).expect("schema json");
    jsonschema::validator_for(&schema).expect("valid JSON schema")
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).expect("yaml as json")
}

#[test]
fn values_match_the_schema() {
    let validator = schema_validator();
    let values = to_json(&chart_values());
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    // The schema refuses what it should: typos, wrong types, wrong enums.
    let mutations: &[(&str, serde_json::Value)] = &[
        ("/imagee", serde_json::json!({})),
        ("/image/tags", serde_json::json!("1")),
        ("/image/pullPolicy", serde_json::json!("Sometimes")),
        ("/nativeSidecar", serde_json::json!("yes")),
        ("/metrics/serviceMonitor/enable", serde_json::json!(true)),
        ("/config/subscription", serde_json::json!([])),
        ("/config/app_id", serde_json::json!("Not Valid")),
        ("/probes/startup/periodSecond", serde_json::json!(1)),
        ("/resources/request", serde_json::json!({})),
    ];
    for (pointer, value) in mutations {
        let mut broken = values.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        broken
            .pointer_mut(parent)
            .and_then(|p| p.as_object_mut())
            .unwrap_or_else(|| panic!("{parent}"))
            .insert(key.to_string(), value.clone());
        assert!(
            !validator.is_valid(&broken),
            "schema accepts {pointer} = {value}"
        );
    }
}

/// Paths under which values are passed through to Kubernetes or jetway as a
/// whole, so the schema does not list their keys.
const PASSTHROUGH: &[&str] = &[
    "/config/log",
    "/config/nats",
    "/config/api",
    "/config/metrics",
    "/config/publish",
    "/config/dead_letter",
    "/config/app",
    "/resources/requests",
    "/resources/limits",
    "/securityContext",
    "/global",
];

#[test]
fn schema_is_strict_everywhere() {
    let schema: serde_json::Value =
        serde_json::from_str(&read(format!("{CHART}/values.schema.json"))).expect("schema");
    fn walk(s: &serde_json::Value, path: String, loose: &mut Vec<String>) {
        if s["type"] == "object" {
            let has_props = s.get("properties").is_some();
            let strict =
                s["additionalProperties"] == false || s["additionalProperties"].is_object();
            if !strict && !PASSTHROUGH.contains(&path.as_str()) && has_props {
                loose.push(path.clone());
            }
            if !has_props && !strict && !PASSTHROUGH.contains(&path.as_str()) {
                loose.push(path.clone());
            }
            for (k, v) in s["properties"].as_object().into_iter().flatten() {
                walk(v, format!("{path}/{k}"), loose);
            }
        }
    }
    let mut loose = Vec::new();
    walk(&schema, String::new(), &mut loose);
    assert!(loose.is_empty(), "objects that accept any key: {loose:?}");
}

/// `.Values.a.b` paths used in the templates.
fn values_references() -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (name, text) in templates() {
        let actions = gotmpl::actions(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = actions.join("\n");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".Values.") {
            let tail = &rest[at + ".Values.".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(tail.len());
            refs.insert(tail[..end].trim_end_matches('.').to_string());
            rest = &tail[end..];
        }
    }
    refs
}

#[test]
fn every_values_path_in_the_templates_exists() {
    let values = chart_values();
    let refs = values_references();
    assert!(refs.len() > 10, "{refs:?}");
    for r in &refs {
        let found = r.split('.').try_fold(&values, |v, k| v.get(k));
        assert!(found.is_some(), ".Values.{r} is not in values.yaml");
    }
    // And the other way round: every value is used (no dead keys), except
    // inside subtrees passed on whole.
    fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    let k = k.as_str().unwrap_or_default();
                    let p = if path.is_empty() {
                        k.to_string()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(v, p, out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut all = Vec::new();
    leaves(&values, String::new(), &mut all);
    for leaf in all {
        let used = refs
            .iter()
            .any(|r| leaf == *r || leaf.starts_with(&format!("{r}.")));
        assert!(used, "values.yaml key {leaf} is used by no template");
    }
}

#[test]
fn values_are_documented_key_by_key() {
    // Every key outside the passed-through subtrees has a comment right
    // above it (or is a section whose first key has one).
    let text = read(format!("{CHART}/values.yaml"));
    let lines: Vec<&str> = text.lines().collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        stack.retain(|(d, _)| *d < indent);
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join("/");
        stack.push((indent, key.to_string()));
        let path = format!("/{path}");
        if PASSTHROUGH
            .iter()
            .any(|p| path.starts_with(&format!("{p}/")))
            || path.starts_with("/config/")
            || path.starts_with("/probes/")
            || path.starts_with("/resources/")
        {
            continue;
        }
        let is_section = rest.trim().is_empty();
        let commented = i > 0 && lines[i - 1].trim_start().starts_with('#');
        assert!(
            commented || is_section,
            "values.yaml line {}: {key} has no comment",
            i + 1
        );
    }
}

#[test]
fn named_templates_exist_and_includes_resolve() {
    let mut defined = BTreeSet::new();
    let mut included = BTreeSet::new();
    for (_, text) in templates() {
        for (marker, set) in [("define \"", &mut defined), ("include \"", &mut included)] {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(marker) {
                let tail = &rest[at + marker.len()..];
                let end = tail.find('"').expect("closing quote");
                set.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    for name in ["jetway.sidecar", "jetway.volumes", "jetway.configMap"] {
        assert!(defined.contains(name), "template {name}");
    }
    let missing: Vec<&String> = included.difference(&defined).collect();
    assert!(missing.is_empty(), "included but not defined: {missing:?}");
    let readme = read(format!("{CHART}/README.md"));
    for name in ["jetway.sidecar", "jetway.volumes", "jetway.configMap"] {
        assert!(
            readme.contains(&format!("include \"{name}\"")),
            "README shows {name}"
        );
    }
}

// --- rendering the chart ------------------------------------------------------------

/// A renderer of the subset of Go templates (and Helm's functions) the
/// chart uses, so that its output can be validated like every other
/// manifest. It is stricter than Helm: a missing value is an error.
mod gotmpl {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde_json::{json, Value};

    #[derive(Debug, Clone)]
    enum Arg {
        Field(Vec<String>),
        Root(Vec<String>),
        Str(String),
        Int(i64),
        Ident(String),
        Pipe(Vec<Vec<Arg>>),
    }

    type Pipeline = Vec<Vec<Arg>>;

    #[derive(Debug, Clone)]
    enum Node {
        Text(String),
        Action(Pipeline),
        If(Pipeline, Vec<Node>, Vec<Node>),
        With(Pipeline, Vec<Node>, Vec<Node>),
    }

    /// Text pieces and actions, trim markers applied.
    fn lex(src: &str) -> Result<Vec<(bool, String)>, String> {
        let mut out: Vec<(bool, String)> = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_string();
            if trim_next {
                text = text.trim_start().to_string();
            }
            let after = &rest[start + 2..];
            let trim_prev = after.starts_with("- ");
            if trim_prev {
                text = text.trim_end().to_string();
            }
            out.push((false, text));
            // A comment may hold `}}`: it ends at `*/}}` or `*/ -}}`.
            let is_comment = after.trim_start_matches("- ").starts_with("/*");
            let end = if is_comment {
                let close = after.find("*/").ok_or("unclosed comment")? + 2;
                close + after[close..].find("}}").ok_or("unclosed {{")?
            } else {
                find_close(after).ok_or("unclosed {{")?
            };
            let mut body = &after[..end];
            if trim_prev {
                body = &body[1..];
            }
            trim_next = body.ends_with(" -");
            if trim_next {
                body = &body[..body.len() - 1];
            }
            let body = body.trim();
            if !(body.starts_with("/*") && body.ends_with("*/")) {
                out.push((true, body.to_string()));
            }
            rest = &after[end + 2..];
        }
        let text = if trim_next { rest.trim_start() } else { rest };
        out.push((false, text.to_string()));
        Ok(out)
    }

    /// The actions of a template (comments left out), as written.
    pub fn actions(src: &str) -> Result<Vec<String>, String> {
        Ok(lex(src)?
            .into_iter()
            .filter(|(action, _)| *action)
            .map(|(_, body)| body)
            .collect())
    }

    /// The `}}` closing an action, skipping string literals.
    fn find_close(s: &str) -> Option<usize> {
        let b = s.as_bytes();
        let mut i = 0;
        let mut quoted = false;
        while i + 1 < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted && b[i + 1] == b'}' => return Some(i),
                _ => {}
            }
            i += 1;
        }
        None
    }

    fn tokens(s: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if c == '"' {
                let mut lit = String::from("\"");
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    lit.push(chars[i]);
                    i += 1;
                }
                i += 1;
                out.push(lit);
            } else if "()|".contains(c) {
                out.push(c.to_string());
                i += 1;
            } else {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"()|\"".contains(chars[i]) {
                    i += 1;
                }
                out.push(chars[start..i].iter().collect());
            }
        }
        Ok(out)
    }

    fn parse_pipeline(toks: &[String], pos: &mut usize) -> Result<Pipeline, String> {
        let mut pipeline = vec![Vec::new()];
        while *pos < toks.len() {
            let t = &toks[*pos];
            *pos += 1;
            let arg = match t.as_str() {
                ")" => return Ok(pipeline),
                "|" => {
                    pipeline.push(Vec::new());
                    continue;
                }
                "(" => Arg::Pipe(parse_pipeline(toks, pos)?),
                _ if t.starts_with('"') => Arg::Str(t[1..].to_string()),
                "." => Arg::Field(vec![]),
                _ if t.starts_with('.') => {
                    Arg::Field(t[1..].split('.').map(str::to_owned).collect())
                }
                "$" => Arg::Root(vec![]),
                _ if t.starts_with("$.") => {
                    Arg::Root(t[2..].split('.').map(str::to_owned).collect())
                }
                _ if t.parse::<i64>().is_ok() => Arg::Int(t.parse().map_err(|_| "int")?),
                _ if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    Arg::Ident(t.clone())
                }
                _ => return Err(format!("unsupported token {t:?}")),
            };
            pipeline.last_mut().ok_or("empty")?.push(arg);
        }
        Ok(pipeline)
    }

    fn pipeline_of(src: &str) -> Result<Pipeline, String> {
        let toks = tokens(src)?;
        let mut pos = 0;
        parse_pipeline(&toks, &mut pos)
    }

    /// Parses a template file into its nodes and the templates it defines.
    fn parse(src: &str, defines: &mut BTreeMap<String, Vec<Node>>) -> Result<Vec<Node>, String> {
        let items = lex(src)?;
        let mut pos = 0;
        let (nodes, end) = parse_nodes(&items, &mut pos, defines)?;
        if end.is_some() {
            return Err(format!("unexpected {end:?}"));
        }
        Ok(nodes)
    }

    /// Parses until `end` or `else`; returns which one stopped it.
    fn parse_nodes(
        items: &[(bool, String)],
        pos: &mut usize,
        defines: &mut BTreeMap<String, Vec<Node>>,
    ) -> Result<(Vec<Node>, Option<String>), String> {
        let mut nodes = Vec::new();
        while *pos < items.len() {
            let (action, body) = &items[*pos];
            *pos += 1;
            if !action {
                nodes.push(Node::Text(body.clone()));
                continue;
            }
            let (word, rest) = body.split_once(' ').unwrap_or((body, ""));
            match word {
                "end" | "else" => return Ok((nodes, Some(word.to_string()))),
                "if" | "with" => {
                    let cond = pipeline_of(rest)?;
                    let (then, stop) = parse_nodes(items, pos, defines)?;
                    let otherwise = if stop.as_deref() == Some("else") {
                        let (otherwise, stop) = parse_nodes(items, pos, defines)?;
                        if stop.as_deref() != Some("end") {
                            return Err("else without end".into());
                        }
                        otherwise
                    } else {
                        vec![]
                    };
                    nodes.push(if word == "if" {
                        Node::If(cond, then, otherwise)
                    } else {
                        Node::With(cond, then, otherwise)
                    });
                }
                "define" => {
                    let name = rest.trim().trim_matches('"').to_string();
                    let (body, stop) = parse_nodes(items, pos, defines)?;
                    if stop.as_deref() != Some("end") {
                        return Err(format!("define {name} without end"));
                    }
                    defines.insert(name, body);
                }
                "range" | "block" | "template" => {
                    return Err(format!("{word} is not supported by this renderer"))
                }
                _ if body.contains(":=") => {
                    return Err("variables are not supported by this renderer".into())
                }
                _ => nodes.push(Node::Action(pipeline_of(body)?)),
            }
        }
        Ok((nodes, None))
    }

    pub struct Chart {
        dir: PathBuf,
        defines: BTreeMap<String, Vec<Node>>,
        files: Vec<(String, Vec<Node>)>,
    }

    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    fn to_yaml(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            _ => serde_norway::to_string(v)
                .unwrap_or_default()
                .trim_end_matches('\n')
                .to_string(),
        }
    }

    fn indent(n: &Value, s: &Value) -> Result<String, String> {
        let n = n.as_u64().ok_or("indent: width")? as usize;
        let pad = " ".repeat(n);
        Ok(text(s)
            .split('\n')
            .map(|l| format!("{pad}{l}"))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    impl Chart {
        pub fn load(dir: PathBuf) -> Result<Self, String> {
            let mut defines = BTreeMap::new();
            let mut files = Vec::new();
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
                .map_err(|e| e.to_string())?
                .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            paths.sort();
            for path in paths {
                let src = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let nodes = parse(&src, &mut defines).map_err(|e| format!("{name}: {e}"))?;
                if !name.starts_with('_') {
                    files.push((name, nodes));
                }
            }
            Ok(Self {
                dir,
                defines,
                files,
            })
        }

        /// Renders every template file with these values.
        pub fn render(&self, values: &Value) -> Result<Vec<(String, String)>, String> {
            let root = json!({
                "Values": values,
                "Release": {"Name": "demo", "Namespace": "default", "Service": "Helm"},
            });
            self.files
                .iter()
                .map(|(name, nodes)| {
                    let mut out = String::new();
                    self.exec(nodes, &root, &root, &mut out)
                        .map_err(|e| format!("{name}: {e}"))?;
                    Ok((name.clone(), out))
                })
                .collect()
        }

        /// Renders a piece of template text (e.g. a README snippet).
        pub fn render_snippet(&self, src: &str, root: &Value) -> Result<String, String> {
            let mut defines = BTreeMap::new();
            let nodes = parse(src, &mut defines)?;
            let mut out = String::new();
            self.exec(&nodes, root, root, &mut out)?;
            Ok(out)
        }

        fn exec(
            &self,
            nodes: &[Node],
            dot: &Value,
            root: &Value,
            out: &mut String,
        ) -> Result<(), String> {
            for node in nodes {
                match node {
                    Node::Text(t) => out.push_str(t),
                    Node::Action(p) => out.push_str(&text(&self.eval(p, dot, root)?)),
                    Node::If(cond, then, otherwise) => {
                        let branch = if truthy(&self.eval(cond, dot, root)?) {
                            then
                        } else {
                            otherwise
                        };
                        self.exec(branch, dot, root, out)?;
                    }
                    Node::With(cond, then, otherwise) => {
                        let v = self.eval(cond, dot, root)?;
                        if truthy(&v) {
                            self.exec(then, &v, root, out)?;
                        } else {
                            self.exec(otherwise, dot, root, out)?;
                        }
                    }
                }
            }
            Ok(())
        }

        fn eval(&self, p: &Pipeline, dot: &Value, root: &Value) -> Result<Value, String> {
            let mut piped: Option<Value> = None;
            for cmd in p {
                piped = Some(self.command(cmd, piped, dot, root)?);
            }
            piped.ok_or_else(|| "empty pipeline".to_string())
        }

        fn field(&self, base: &Value, path: &[String]) -> Result<Value, String> {
            let mut v = base;
            for (i, k) in path.iter().enumerate() {
                v = v
                    .get(k)
                    .ok_or_else(|| format!("missing value .{}", path[..=i].join(".")))?;
            }
            Ok(v.clone())
        }

        fn arg(&self, a: &Arg, dot: &Value, root: &Value) -> Result<Value, String> {
            Ok(match a {
                Arg::Field(path) => self.field(dot, path)?,
                Arg::Root(path) => self.field(root, path)?,
                Arg::Str(s) => Value::String(s.clone()),
                Arg::Int(n) => json!(n),
                Arg::Pipe(p) => self.eval(p, dot, root)?,
                Arg::Ident(name) => self.call(name, vec![], dot, root)?,
            })
        }

        fn command(
            &self,
            cmd: &[Arg],
            piped: Option<Value>,
            dot: &Value,
            root: &Value,
        ) -> Result<Value, String> {
            let first = cmd.first().ok_or("empty command")?;
            // .Files.Get "path"
            if let Arg::Field(path) = first {
                if path == &["Files".to_string(), "Get".to_string()] {
                    let name = self.arg(cmd.get(1).ok_or(".Files.Get needs a path")?, dot, root)?;
                    let file = self.dir.join(text(&name));
                    return std::fs::read_to_string(&file)
                        .map(Value::String)
                        .map_err(|e| format!("{}: {e}", file.display()));
                }
            }
            match first {
                Arg::Ident(name) => {
                    let mut args = cmd[1..]
                        .iter()
                        .map(|a| self.arg(a, dot, root))
                        .collect::<Result<Vec<_>, _>>()?;
                    args.extend(piped);
                    self.call(name, args, dot, root)
                }
                _ if cmd.len() == 1 && piped.is_none() => self.arg(first, dot, root),
                _ => Err(format!("cannot call {first:?}")),
            }
        }

        fn call(
            &self,
            name: &str,
            args: Vec<Value>,
            _dot: &Value,
            _root: &Value,
        ) -> Result<Value, String> {
            let want = |n: usize| -> Result<(), String> {
                if args.len() == n {
                    Ok(())
                } else {
                    Err(format!("{name}: {} arguments, not {n}", args.len()))
                }
            };
            Ok(match name {
                "include" => {
                    want(2)?;
                    let tname = text(&args[0]);
                    let body = self
                        .defines
                        .get(&tname)
                        .ok_or_else(|| format!("no template {tname}"))?;
                    let mut out = String::new();
                    self.exec(body, &args[1], &args[1], &mut out)?;
                    Value::String(out)
                }
                "toYaml" => {
                    want(1)?;
                    Value::String(to_yaml(&args[0]))
                }
                "nindent" => {
                    want(2)?;
                    Value::String(format!("\n{}", indent(&args[0], &args[1])?))
                }
                "indent" => {
                    want(2)?;
                    Value::String(indent(&args[0], &args[1])?)
                }
                "quote" => {
                    want(1)?;
                    Value::String(format!("{:?}", text(&args[0])))
                }
                "default" => {
                    want(2)?;
                    if truthy(&args[1]) {
                        args[1].clone()
                    } else {
                        args[0].clone()
                    }
                }
                "not" => {
                    want(1)?;
                    Value::Bool(!truthy(&args[0]))
                }
                "printf" => {
                    let mut f = text(args.first().ok_or("printf: format")?);
                    for a in &args[1..] {
                        f = f.replacen("%s", &text(a), 1);
                    }
                    if f.contains('%') {
                        return Err(format!("printf: unsupported format {f}"));
                    }
                    Value::String(f)
                }
                "trunc" => {
                    want(2)?;
                    let n = args[0].as_u64().ok_or("trunc: length")? as usize;
                    Value::String(text(&args[1]).chars().take(n).collect())
                }
                "trimSuffix" => {
                    want(2)?;
                    let s = text(&args[1]);
                    let suffix = text(&args[0]);
                    Value::String(s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_string())
                }
                "sha256sum" => {
                    // Only its shape matters here: 64 hex digits.
                    use std::hash::{Hash, Hasher};
                    want(1)?;
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    text(&args[0]).hash(&mut h);
                    Value::String(format!("{:064x}", h.finish()))
                }
                "dict" => {
                    let mut m = serde_json::Map::new();
                    for pair in args.chunks(2) {
                        let [k, v] = pair else {
                            return Err("dict: odd arguments".into());
                        };
                        m.insert(text(k), v.clone());
                    }
                    Value::Object(m)
                }
                _ => return Err(format!("function {name} is not supported by this renderer")),
            })
        }
    }
}

fn chart() -> gotmpl::Chart {
    gotmpl::Chart::load(root().join(CHART)).expect("chart templates parse")
}

/// Renders the chart and returns its documents, validated.
fn render(values: &Value) -> Vec<Value> {
    let rendered = chart()
        .render(&to_json_value(values))
        .expect("chart renders");
    let mut docs = Vec::new();
    for (name, text) in rendered {
        if name == "NOTES.txt" {
            assert!(text.contains("jetway"), "NOTES.txt");
            continue;
        }
        let found = documents(&text);
        validate_all(&format!("rendered {name}"), &found);
        docs.extend(found);
    }
    docs
}

fn to_json_value(v: &Value) -> serde_json::Value {
    to_json(v)
}

fn with(values: &Value, changes: &[(&str, serde_json::Value)]) -> Value {
    let mut json = to_json(values);
    for (pointer, value) in changes {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        json.pointer_mut(parent)
            .and_then(|p| p.as_object_mut())
            .unwrap_or_else(|| panic!("{parent}"))
            .insert(key.to_string(), value.clone());
    }
    assert!(
        schema_validator().is_valid(&json),
        "changed values fit the schema"
    );
    serde_json::from_value(json).expect("back to yaml")
}

/// The container and volumes `jetway inject` adds for this ConfigMap/Secret.
fn injected(config_map: &str, secret: Option<&str>, legacy: bool) -> (Value, Vec<Value>) {
    let mut pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    jetway.io/inject: enabled\n    jetway.io/config: {config_map}\n"
    );
    if let Some(secret) = secret {
        pod.push_str(&format!("    jetway.io/credentials-secret: {secret}\n"));
    }
    pod.push_str("spec:\n  containers: [{name: app, image: app}]\n");
    let opts = jetway::inject::InjectOptions {
        legacy,
        ..Default::default()
    };
    let out = documents(&jetway::inject::inject(&pod, &opts).expect("inject")).remove(0);
    let list = if legacy {
        "containers"
    } else {
        "initContainers"
    };
    let sidecar = seq(&out["spec"][list])
        .into_iter()
        .find(|c| str_at(c, &["name"]) == "jetway")
        .cloned()
        .expect("sidecar");
    (
        sidecar,
        seq(&out["spec"]["volumes"]).into_iter().cloned().collect(),
    )
}

#[test]
fn chart_renders_valid_kubernetes_with_defaults() {
    let docs = render(&chart_values());
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
    assert_eq!(kinds, ["ConfigMap"], "defaults render the ConfigMap only");
    let (text, config) = jetway_config(&docs[0]);
    assert_eq!(
        config,
        chart_values()["config"],
        "the ConfigMap holds .Values.config"
    );
    jetway_check("rendered chart ConfigMap", &text);
}

#[test]
fn chart_renders_valid_kubernetes_with_everything_on() {
    let values = with(
        &chart_values(),
        &[
            ("/example/enabled", serde_json::json!(true)),
            ("/metrics/service/enabled", serde_json::json!(true)),
            ("/metrics/serviceMonitor/enabled", serde_json::json!(true)),
            (
                "/metrics/serviceMonitor/labels",
                serde_json::json!({"release": "kube-prometheus-stack"}),
            ),
            ("/prometheusRule/enabled", serde_json::json!(true)),
            (
                "/natsCredentials/secretName",
                serde_json::json!("demo-nats"),
            ),
        ],
    );
    let docs = render(&values);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "Service",
            "ServiceMonitor",
            "PrometheusRule"
        ])
    );
    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    check_pod_spec("chart example", &pod["spec"]);
    let config_maps: Vec<&Value> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == "ConfigMap")
        .collect();

    // The sidecar and volumes are the ones `jetway inject` adds.
    let (sidecar, volumes) = injected("demo-jetway", Some("demo-nats"), false);
    assert_eq!(pod["spec"]["initContainers"][0], sidecar);
    let jetway_volumes: Vec<Value> = seq(&pod["spec"]["volumes"])
        .into_iter()
        .filter(|v| str_at(v, &["name"]).starts_with("jetway"))
        .cloned()
        .collect();
    assert_eq!(jetway_volumes, volumes);

    // Selectors and ports line up.
    let pod_labels = labels(&pod["metadata"]["labels"]);
    let service = find(&docs, "Service");
    assert!(is_subset(
        &labels(&service["spec"]["selector"]),
        &pod_labels
    ));
    let monitor = find(&docs, "ServiceMonitor");
    assert!(is_subset(
        &labels(&monitor["spec"]["selector"]["matchLabels"]),
        &labels(&service["metadata"]["labels"])
    ));
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        str_at(&service["spec"]["ports"][0], &["targetPort"]),
        "jetway-metrics"
    );
    let rule = find(&docs, "PrometheusRule");
    let deploy_rules = &documents(&read("deploy/prometheus/alerts.yaml"))[0]["spec"];
    assert_eq!(&rule["spec"], deploy_rules);
    // The config change checksum is there.
    assert!(pod["metadata"]["annotations"]["checksum/jetway-config"].is_string());

    check_sidecar_wiring("chart example", &pod["spec"], &config_maps);
}

#[test]
fn chart_renders_a_legacy_sidecar() {
    let values = with(
        &chart_values(),
        &[
            ("/example/enabled", serde_json::json!(true)),
            ("/nativeSidecar", serde_json::json!(false)),
        ],
    );
    let docs = render(&values);
    let pod_spec = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(pod_spec.get("initContainers").is_none());
    let (sidecar, _) = injected("demo-jetway", None, true);
    assert_eq!(pod_spec["containers"][0]["name"], "app");
    assert_eq!(pod_spec["containers"][1], sidecar);
    check_pod_spec("legacy chart example", pod_spec);
}

#[test]
fn chart_env_and_config_map_name_are_used() {
    let values = with(
        &chart_values(),
        &[
            ("/example/enabled", serde_json::json!(true)),
            ("/configMap/name", serde_json::json!("shop-jetway")),
            (
                "/env",
                serde_json::json!([{"name": "JETWAY_API__TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "token"}}}]),
            ),
        ],
    );
    let docs = render(&values);
    assert_eq!(
        str_at(find(&docs, "ConfigMap"), &["metadata", "name"]),
        "shop-jetway"
    );
    let pod_spec = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod_spec["volumes"][0]["configMap"]["name"], "shop-jetway");
    assert_eq!(
        pod_spec["initContainers"][0]["env"][0]["name"],
        "JETWAY_API__TOKEN"
    );
    // A typo in a passed-through Kubernetes field is caught after rendering.
    let values = with(
        &values,
        &[("/securityContext/runAsNonroot", serde_json::json!(true))],
    );
    let rendered = chart().render(&to_json(&values)).expect("renders");
    let docs: Vec<Value> = rendered
        .iter()
        .filter(|(n, _)| n != "NOTES.txt")
        .flat_map(|(_, t)| documents(t))
        .collect();
    let err = validate(find(&docs, "Deployment")).expect_err("typo in securityContext");
    assert!(err.contains("runAsNonroot"), "{err}");
}

#[test]
fn chart_readme_snippet_renders_from_a_parent_chart() {
    // The include snippet of the chart README, rendered as a parent chart
    // would with jetway's values under `jetway:`.
    let readme = read(format!("{CHART}/README.md"));
    let start = readme
        .find("{{- $jetway := dict")
        .expect("snippet in README");
    let block = &readme[start..];
    let end = block.find("```").expect("end of snippet");
    let snippet = block[..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    // `$jetway := dict ...` is a variable; this renderer has none, so
    // substitute its definition where it is used.
    let (first, rest) = snippet.split_once('\n').expect("lines");
    let definition = first
        .trim()
        .trim_start_matches("{{-")
        .trim_end_matches("}}")
        .trim()
        .strip_prefix("$jetway :=")
        .expect("$jetway := ...")
        .trim()
        .to_string();
    let rest = rest.replace("$jetway", &format!("({definition})"));
    let root = serde_json::json!({
        "Values": {"jetway": to_json(&chart_values())},
        "Release": {"Name": "shop", "Namespace": "default", "Service": "Helm"},
    });
    let out = chart()
        .render_snippet(&rest, &root)
        .expect("snippet renders");
    let doc: Value = serde_norway::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let spec = &doc["spec"]["template"]["spec"];
    let (sidecar, volumes) = injected("shop-jetway", None, false);
    assert_eq!(spec["initContainers"][0], sidecar, "{out}");
    assert_eq!(
        seq(&spec["volumes"])
            .into_iter()
            .cloned()
            .collect::<Vec<_>>(),
        volumes
    );
}

#[test]
fn renderer_is_strict() {
    // A misspelt value path fails rendering instead of rendering nothing.
    let c = chart();
    let root = serde_json::json!({"Values": {"a": 1}, "Release": {"Name": "x"}});
    assert!(c.render_snippet("{{ .Values.b }}", &root).is_err());
    assert_eq!(
        c.render_snippet("x {{- .Values.a }} y", &root).expect("ok"),
        "x1 y"
    );
    assert!(c.render_snippet("{{ include \"nope\" . }}", &root).is_err());
}

// --- probes: a NATS outage keeps the pod in its Services ------------------------------

/// The jetway container of a pod spec, from either list.
fn jetway_container(what: &str, pod_spec: &Value) -> Value {
    seq(&pod_spec["initContainers"])
        .into_iter()
        .chain(seq(&pod_spec["containers"]))
        .find(|c| str_at(c, &["name"]) == "jetway")
        .cloned()
        .unwrap_or_else(|| panic!("{what}: no jetway container"))
}

fn has_jetway(pod_spec: &Value) -> bool {
    seq(&pod_spec["initContainers"])
        .into_iter()
        .chain(seq(&pod_spec["containers"]))
        .any(|c| str_at(c, &["name"]) == "jetway")
}

/// Every jetway container that the shipped files and `jetway inject` produce.
fn shipped_sidecars() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let docs = kustomize_resources("deploy/kubernetes");
    let spec = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    out.push((
        "deploy/kubernetes".to_string(),
        jetway_container("kustomize", spec),
    ));
    for native in [true, false] {
        let values = with(
            &chart_values(),
            &[
                ("/example/enabled", serde_json::json!(true)),
                ("/nativeSidecar", serde_json::json!(native)),
            ],
        );
        let docs = render(&values);
        let spec = &find(&docs, "Deployment")["spec"]["template"]["spec"];
        let what = format!("chart (nativeSidecar {native})");
        out.push((what.clone(), jetway_container(&what, spec)));
    }
    for legacy in [false, true] {
        out.push((
            format!("jetway inject (legacy {legacy})"),
            injected("c", None, legacy).0,
        ));
    }
    let dir = root().join("tests/fixtures/inject");
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".out.yaml") || name.starts_with("already-injected") {
            continue;
        }
        // Unannotated workloads (in mixed.*) have no sidecar.
        for doc in documents(&read(&path)) {
            for (workload, spec) in pod_specs(&doc) {
                if has_jetway(spec) {
                    out.push((format!("{name} {workload}"), jetway_container(&name, spec)));
                }
            }
        }
    }
    out
}

#[test]
fn sidecars_start_on_readyz_and_stay_ready_on_healthz() {
    // SPEC section 7: /readyz gates the start only; readiness on /readyz
    // would take every pod of every app out of its Services when NATS has a
    // bad minute.
    let sidecars = shipped_sidecars();
    assert!(sidecars.len() >= 15, "only {} sidecars", sidecars.len());
    for (what, c) in &sidecars {
        for (probe, path) in [
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert_eq!(
                str_at(c, &[probe, "httpGet", "path"]),
                path,
                "{what}: {probe}"
            );
            assert_eq!(
                str_at(c, &[probe, "httpGet", "port"]),
                "jetway-metrics",
                "{what}: {probe}"
            );
        }
        // A slow NATS gets a few minutes before the kubelet gives up.
        let startup = &c["startupProbe"];
        let budget = startup["periodSeconds"].as_u64().unwrap_or(0)
            * startup["failureThreshold"].as_u64().unwrap_or(0);
        assert!(
            (180..=600).contains(&budget),
            "{what}: startup budget {budget} s"
        );
    }
    // All of them are one and the same probes (modulo the native/legacy
    // difference, which is not in the probes).
    let first = &sidecars[0].1;
    for (what, c) in &sidecars {
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe], first[probe], "{what}: {probe}");
        }
    }
}

#[test]
fn docs_explain_the_probes_and_the_outage() {
    // The choice, what the app sees during an outage and how to alert on it
    // are written where operators look.
    let readme = read("deploy/README.md");
    let start = readme
        .find("## Probes and NATS outages")
        .expect("section in deploy/README.md");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    for words in [
        "`/readyz`",
        "`/healthz`",
        "nats_unavailable",
        "Retry-After",
        "JetwayNatsDisconnected",
        "NATS connection",
        "5 minutes",
    ] {
        assert!(section.contains(words), "deploy/README.md lacks {words}");
    }
    for (file, words) in [
        (
            "deploy/kubernetes/deployment.yaml",
            &["JetwayNatsDisconnected", "nats_unavailable"][..],
        ),
        (
            "helm/jetway/values.yaml",
            &["JetwayNatsDisconnected", "5 minutes"][..],
        ),
        (
            "helm/jetway/templates/_helpers.tpl",
            &["JetwayNatsDisconnected", "nats_unavailable"][..],
        ),
    ] {
        let text = read(file);
        for w in words {
            assert!(text.contains(w), "{file} lacks {w}");
        }
    }
}

/// What the kubelet's HTTP probe concludes: success on 200..=399 within
/// `timeoutSeconds`.
async fn kubelet_probe(
    http: &reqwest::Client,
    metrics: std::net::SocketAddr,
    probe: &Value,
) -> bool {
    let path = str_at(probe, &["httpGet", "path"]);
    let timeout = probe["timeoutSeconds"].as_u64().unwrap_or(1);
    match http
        .get(format!("http://{metrics}{path}"))
        .timeout(std::time::Duration::from_secs(timeout))
        .send()
        .await
    {
        Ok(r) => (200..400).contains(&r.status().as_u16()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_probes_keep_the_pod_ready_through_a_nats_outage() {
    use common::*;
    // The probes exactly as the example manifest has them (the chart and
    // inject have the same, see above), run the way the kubelet runs them
    // against a real sidecar while its NATS goes away and comes back.
    let docs = kustomize_resources("deploy/kubernetes");
    let sidecar_spec = jetway_container(
        "kustomize",
        &find(&docs, "Deployment")["spec"]["template"]["spec"],
    );
    let [startup, readiness, liveness] =
        ["startupProbe", "readinessProbe", "livenessProbe"].map(|p| sidecar_spec[p].clone());

    let mut nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "subscriptions:\n  - {{ name: s1, subject: \"orders.>\", endpoint: \"{}\" }}\n",
            endpoint.url("/e")
        ),
    );
    let s = Sidecar::start(&yaml).await;
    let http = reqwest::Client::new();
    for probe in [&startup, &readiness, &liveness] {
        assert!(kubelet_probe(&http, s.metrics, probe).await, "{probe:?}");
    }

    nats.stop();
    eventually("jetway notices the lost connection", || {
        let s = &s;
        async move { (s.metric("jetway_nats_connected", &[]).await == 0.0).then_some(()) }
    })
    .await;
    // The start gate would hold a new pod back ...
    assert!(!kubelet_probe(&http, s.metrics, &startup).await);
    // ... but a running pod stays ready (in its Services) and is not restarted.
    assert!(kubelet_probe(&http, s.metrics, &readiness).await);
    assert!(kubelet_probe(&http, s.metrics, &liveness).await);
    // The app's publishes meanwhile: 503 nats_unavailable with Retry-After.
    let r = s.publish("orders.created", b"during").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some(), "{r:?}");
    let body: serde_json::Value = r.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "nats_unavailable", "{body}");
    assert!(
        s.metric("jetway_publish_total", &[("outcome", "unavailable")])
            .await
            >= 1.0
    );

    // NATS comes back: jetway reconnects by itself, publishes and deliveries
    // resume, and the probes never had a reason to restart it.
    nats.restart();
    eventually("publishes go through again", || {
        let s = &s;
        async move { (s.publish("orders.created", b"after").await.status() == 200).then_some(()) }
    })
    .await;
    endpoint.wait_for(1).await;
    assert!(kubelet_probe(&http, s.metrics, &startup).await);
    assert!(kubelet_probe(&http, s.metrics, &readiness).await);
    s.stop().await;
}
