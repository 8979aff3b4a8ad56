//! `jetway inject`: adds the jetway sidecar to Kubernetes workloads.
//!
//! Like `linkerd inject`, it reads Kubernetes YAML (one or many documents),
//! finds every workload whose pod template carries the annotation
//! `jetway.io/inject: "enabled"` and adds the sidecar to its pod spec: by
//! default as a native sidecar (an init container with `restartPolicy:
//! Always`, Kubernetes 1.29 and newer), with `legacy` as a regular container.
//! The jetway config comes from the ConfigMap named by `jetway.io/config`
//! (key `jetway.yaml`); `jetway.io/credentials-secret` optionally names a
//! Secret holding the NATS credentials (key `nats.creds`).
//!
//! The documents are handled as generic YAML values, never as typed
//! Kubernetes objects, so fields this module does not know (newer API
//! fields, CRD content) pass through untouched. Injection is idempotent: a
//! pod spec that already has a container named `jetway` gets no second one.
//! Only its probes may change: when they are jetway's (an HTTP probe on the
//! `jetway-metrics` port), they are rewritten to the current ones, so a
//! manifest injected by an older jetway (readiness on `/readyz`) is brought
//! up to date. Comments and formatting of the input are not preserved.
//!
//! The probes follow SPEC section 7: `/readyz` is the startup probe only
//! (the app starts once jetway can publish), `/healthz` carries readiness
//! and liveness. `/readyz` is 503 while NATS is unreachable, and a native
//! sidecar's readiness counts towards the pod's: as a readiness probe it
//! would take every pod of every app out of its Services during a NATS
//! outage, while publishes already answer 503 with `Retry-After` and
//! deliveries simply wait.

use serde::Deserialize;
use serde_norway::{Mapping, Value};

/// Image used when none is given.
pub const DEFAULT_IMAGE: &str = "ghcr.io/jetway/jetway:0.1.0";

/// Pod template annotation that turns injection on (value `enabled`).
pub const ANNOTATION_INJECT: &str = "jetway.io/inject";
/// Pod template annotation naming the ConfigMap that holds `jetway.yaml`.
pub const ANNOTATION_CONFIG: &str = "jetway.io/config";
/// Optional pod template annotation naming the Secret with `nats.creds`.
pub const ANNOTATION_CREDENTIALS_SECRET: &str = "jetway.io/credentials-secret";
/// Optional pod template annotation overriding the sidecar image.
pub const ANNOTATION_IMAGE: &str = "jetway.io/image";

/// Name of the sidecar container; its presence makes injection a no-op.
pub const CONTAINER_NAME: &str = "jetway";
/// Name of the volume holding the config.
pub const CONFIG_VOLUME: &str = "jetway-config";
/// Where the config volume is mounted.
pub const CONFIG_DIR: &str = "/etc/jetway";
/// Name of the volume holding the NATS credentials.
pub const CREDENTIALS_VOLUME: &str = "jetway-nats-credentials";
/// Where the credentials volume is mounted: `nats.credentials_file` in the
/// config should be `/var/run/secrets/jetway/nats.creds`.
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/jetway";

/// Options of `jetway inject`.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// Container image of the sidecar; empty means [`DEFAULT_IMAGE`].
    pub image: String,
    /// Add the sidecar as a regular container (clusters before Kubernetes 1.29).
    pub legacy: bool,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_string(),
            legacy: false,
        }
    }
}

/// Why a document could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not valid YAML.
    #[error("invalid yaml: {0}")]
    Yaml(String),
    /// An annotated workload does not say which ConfigMap holds its config.
    #[error(
        "{resource}: annotation {ANNOTATION_CONFIG} is missing or empty; \
         it must name the ConfigMap whose key jetway.yaml holds the jetway config"
    )]
    MissingConfig {
        /// The workload, e.g. `document 1 (Deployment orders)`.
        resource: String,
    },
    /// The annotation sits on the workload instead of its pod template.
    #[error(
        "{resource}: annotation {ANNOTATION_INJECT} is on the workload's metadata; \
         put it (and {ANNOTATION_CONFIG}) on the pod template's metadata.annotations"
    )]
    AnnotationOnWorkload {
        /// The workload.
        resource: String,
    },
    /// A field on the way to the pod spec has an unexpected shape.
    #[error("{resource}: {path} is not {expected}")]
    Malformed {
        /// The workload.
        resource: String,
        /// Dotted path of the field.
        path: String,
        /// What the field should have been.
        expected: &'static str,
    },
    /// A volume of the sidecar's name already exists with another source.
    #[error(
        "{resource}: the pod already has a volume named {volume} that is not the one \
         jetway would add; rename it or add the jetway container by hand"
    )]
    VolumeConflict {
        /// The workload.
        resource: String,
        /// The volume name.
        volume: &'static str,
    },
    /// A legacy (regular container) sidecar never exits, so a Job would never complete.
    #[error(
        "{resource}: a legacy sidecar is a regular container that never exits, so this \
         job would never complete; inject without --legacy (Kubernetes 1.29+ native sidecar)"
    )]
    LegacyJob {
        /// The workload.
        resource: String,
    },
}

/// Reads multi-document Kubernetes YAML and returns it with the sidecar added.
///
/// Documents are separated by `---` in the output; empty documents are
/// dropped. Unannotated resources come out semantically unchanged.
pub fn inject(input: &str, opts: &InjectOptions) -> Result<String, InjectError> {
    let mut out = String::new();
    for (index, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let mut value =
            Value::deserialize(document).map_err(|e| InjectError::Yaml(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        inject_resource(&mut value, opts, index + 1)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_norway::to_string(&value).map_err(|e| InjectError::Yaml(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Injects one resource; `kind: List` (and `*List` kinds) recurse into `items`.
fn inject_resource(
    resource: &mut Value,
    opts: &InjectOptions,
    document: usize,
) -> Result<(), InjectError> {
    let Some(kind) = resource
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    let name = resource
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let label = format!("document {document} ({kind} {name})");

    if kind.ends_with("List") {
        if let Some(items) = resource.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                inject_resource(item, opts, document)?;
            }
        }
        return Ok(());
    }

    // Where the pod template sits for each workload kind.
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };

    let Some(template) = lookup(resource, template_path) else {
        return Ok(());
    };
    let annotations = template.get("metadata").and_then(|m| m.get("annotations"));
    if !is_enabled(annotations) {
        // A common mistake: the annotation on the Deployment instead of its
        // template (an explicit value on the template wins).
        let on_template = annotations.and_then(|a| a.get(ANNOTATION_INJECT)).is_some();
        if !template_path.is_empty() && !on_template {
            let outer = resource.get("metadata").and_then(|m| m.get("annotations"));
            if is_enabled(outer) {
                return Err(InjectError::AnnotationOnWorkload { resource: label });
            }
        }
        return Ok(());
    }
    // Idempotence: a jetway container in either list means "already done",
    // whichever mode added it; only its probes are brought up to date.
    if template.get("spec").is_some_and(has_sidecar) {
        if let Some(spec) = lookup_mut(resource, template_path).and_then(|t| t.get_mut("spec")) {
            update_probes(spec);
        }
        return Ok(());
    }
    if opts.legacy && (kind == "Job" || kind == "CronJob") {
        return Err(InjectError::LegacyJob { resource: label });
    }

    let plan = Plan::from_annotations(annotations, opts, &label)?;
    let template = lookup_mut(resource, template_path).ok_or_else(|| InjectError::Malformed {
        resource: label.clone(),
        path: template_path.join("."),
        expected: "a mapping",
    })?;
    let spec = template
        .get_mut("spec")
        .filter(|s| s.is_mapping())
        .ok_or_else(|| InjectError::Malformed {
            resource: label.clone(),
            path: dotted(template_path, "spec"),
            expected: "a mapping",
        })?;
    inject_pod_spec(
        spec,
        &plan,
        opts.legacy,
        &label,
        &dotted(template_path, "spec"),
    )
}

/// What the annotations ask for.
struct Plan {
    config_map: String,
    credentials_secret: Option<String>,
    image: String,
}

impl Plan {
    fn from_annotations(
        annotations: Option<&Value>,
        opts: &InjectOptions,
        label: &str,
    ) -> Result<Self, InjectError> {
        let get = |key: &str| {
            annotations
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let config_map = get(ANNOTATION_CONFIG).ok_or_else(|| InjectError::MissingConfig {
            resource: label.to_owned(),
        })?;
        let image = get(ANNOTATION_IMAGE).unwrap_or_else(|| {
            if opts.image.trim().is_empty() {
                DEFAULT_IMAGE.to_owned()
            } else {
                opts.image.clone()
            }
        });
        Ok(Self {
            config_map,
            credentials_secret: get(ANNOTATION_CREDENTIALS_SECRET),
            image,
        })
    }
}

/// Whether the pod spec already has a container named `jetway`, in either list.
fn has_sidecar(spec: &Value) -> bool {
    ["initContainers", "containers"].iter().any(|list| {
        spec.get(*list)
            .and_then(Value::as_sequence)
            .is_some_and(|items| {
                items
                    .iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
            })
    })
}

/// Rewrites the probes of the `jetway` containers of a pod spec to the
/// current ones ([`probes`]), when they are jetway's: at least one of them is
/// an HTTP probe on the `jetway-metrics` port, as every jetway so far wrote
/// them. A container without such a probe was written by hand some other
/// way and is left as it is.
fn update_probes(spec: &mut Value) {
    for list in ["initContainers", "containers"] {
        let Some(items) = spec.get_mut(list).and_then(Value::as_sequence_mut) else {
            continue;
        };
        for container in items.iter_mut() {
            if container.get("name").and_then(Value::as_str) != Some(CONTAINER_NAME)
                || !has_jetway_probe(container)
            {
                continue;
            }
            if let Some(map) = container.as_mapping_mut() {
                // An existing key keeps its place; a missing probe is added.
                for (key, probe) in probes() {
                    map.insert(Value::from(key), probe);
                }
            }
        }
    }
}

/// Whether a container has a probe that jetway wrote.
fn has_jetway_probe(container: &Value) -> bool {
    PROBE_KEYS.iter().any(|key| {
        container
            .get(*key)
            .and_then(|p| p.get("httpGet"))
            .and_then(|h| h.get("port"))
            .and_then(Value::as_str)
            == Some(METRICS_PORT)
    })
}

fn is_enabled(annotations: Option<&Value>) -> bool {
    annotations
        .and_then(|a| a.get(ANNOTATION_INJECT))
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim() == "enabled")
}

fn lookup<'a>(mut value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    for key in path {
        value = value.get(*key)?;
    }
    Some(value)
}

fn lookup_mut<'a>(mut value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    for key in path {
        value = value.get_mut(*key)?;
    }
    Some(value)
}

fn dotted(prefix: &[&str], last: &str) -> String {
    prefix
        .iter()
        .copied()
        .chain(std::iter::once(last))
        .collect::<Vec<_>>()
        .join(".")
}

fn inject_pod_spec(
    spec: &mut Value,
    plan: &Plan,
    legacy: bool,
    label: &str,
    path: &str,
) -> Result<(), InjectError> {
    if has_sidecar(spec) {
        return Ok(());
    }
    for list in ["initContainers", "containers"] {
        if !matches!(
            spec.get(list),
            None | Some(Value::Null | Value::Sequence(_))
        ) {
            return Err(InjectError::Malformed {
                resource: label.to_owned(),
                path: format!("{path}.{list}"),
                expected: "a list",
            });
        }
    }
    let mut volumes = vec![config_volume(&plan.config_map)];
    if let Some(secret) = &plan.credentials_secret {
        volumes.push(credentials_volume(secret));
    }
    let existing = sequence_mut(spec, "volumes", label, path)?;
    for volume in volumes {
        let name = volume.get("name").cloned();
        match existing.iter().find(|v| v.get("name") == name.as_ref()) {
            Some(found) if *found == volume => {}
            Some(_) => {
                let volume = if name.as_ref().and_then(Value::as_str) == Some(CONFIG_VOLUME) {
                    CONFIG_VOLUME
                } else {
                    CREDENTIALS_VOLUME
                };
                return Err(InjectError::VolumeConflict {
                    resource: label.to_owned(),
                    volume,
                });
            }
            None => existing.push(volume),
        }
    }

    let container = sidecar_container(&plan.image, plan.credentials_secret.is_some(), !legacy);
    let list = if legacy {
        "containers"
    } else {
        "initContainers"
    };
    sequence_mut(spec, list, label, path)?.push(container);
    Ok(())
}

/// The list at `spec[key]`, created empty when absent.
fn sequence_mut<'a>(
    spec: &'a mut Value,
    key: &str,
    label: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let malformed = || InjectError::Malformed {
        resource: label.to_owned(),
        path: format!("{path}.{key}"),
        expected: "a list",
    };
    let map = spec.as_mapping_mut().ok_or_else(malformed)?;
    let slot = map
        .entry(Value::from(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut().ok_or_else(malformed)
}

fn config_volume(config_map: &str) -> Value {
    yaml(&[
        ("name", CONFIG_VOLUME.into()),
        (
            "configMap",
            yaml(&[
                ("name", config_map.into()),
                (
                    "items",
                    Value::Sequence(vec![yaml(&[
                        ("key", "jetway.yaml".into()),
                        ("path", "jetway.yaml".into()),
                    ])]),
                ),
            ]),
        ),
    ])
}

fn credentials_volume(secret: &str) -> Value {
    yaml(&[
        ("name", CREDENTIALS_VOLUME.into()),
        (
            "secret",
            yaml(&[
                ("secretName", secret.into()),
                (
                    "items",
                    Value::Sequence(vec![yaml(&[
                        ("key", "nats.creds".into()),
                        ("path", "nats.creds".into()),
                    ])]),
                ),
            ]),
        ),
    ])
}

/// Name of the sidecar's port for `/metrics`, `/healthz` and `/readyz`.
const METRICS_PORT: &str = "jetway-metrics";

/// The container fields holding the probes, in the order [`probes`] gives them.
const PROBE_KEYS: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

/// The sidecar's probes, keyed by container field (SPEC section 7).
///
/// - startup, `/readyz` every 2 s, up to 150 failures: a slow NATS (a
///   cluster still electing its leaders, DNS not there yet) gets 5 minutes
///   before the kubelet restarts the sidecar. A native sidecar's startup
///   probe holds the app containers back until it passes, so the app starts
///   once jetway can publish.
/// - readiness, `/healthz`: 200 while the process serves, NATS or not. A
///   native sidecar's readiness counts towards the pod's, and `/readyz` here
///   would take every pod of every app out of its Services during a NATS
///   outage; meanwhile publishes answer 503 `nats_unavailable` with
///   `Retry-After` and deliveries wait. The outage is alerted on
///   (`JetwayNatsDisconnected`) instead.
/// - liveness, `/healthz`: restarts a sidecar whose process stopped serving.
fn probes() -> [(&'static str, Value); 3] {
    let http_probe = |path: &str, period: u64, failures: u64| {
        yaml(&[
            (
                "httpGet",
                yaml(&[("path", path.into()), ("port", METRICS_PORT.into())]),
            ),
            ("periodSeconds", period.into()),
            ("timeoutSeconds", 2u64.into()),
            ("failureThreshold", failures.into()),
        ])
    };
    [
        (PROBE_KEYS[0], http_probe("/readyz", 2, 150)),
        (PROBE_KEYS[1], http_probe("/healthz", 5, 3)),
        (PROBE_KEYS[2], http_probe("/healthz", 10, 3)),
    ]
}

/// The sidecar container. The same container is written out by hand in
/// `deploy/kubernetes/deployment.yaml` and `helm/jetway/templates/_helpers.tpl`;
/// `tests/deploy.rs` checks that they agree.
fn sidecar_container(image: &str, credentials: bool, native: bool) -> Value {
    let port = |name: &str, number: u64| {
        yaml(&[
            ("name", name.into()),
            ("containerPort", number.into()),
            ("protocol", "TCP".into()),
        ])
    };
    let mut mounts = vec![yaml(&[
        ("name", CONFIG_VOLUME.into()),
        ("mountPath", CONFIG_DIR.into()),
        ("readOnly", true.into()),
    ])];
    if credentials {
        mounts.push(yaml(&[
            ("name", CREDENTIALS_VOLUME.into()),
            ("mountPath", CREDENTIALS_DIR.into()),
            ("readOnly", true.into()),
        ]));
    }

    let mut fields: Vec<(&str, Value)> = vec![
        ("name", CONTAINER_NAME.into()),
        ("image", image.into()),
        ("imagePullPolicy", "IfNotPresent".into()),
    ];
    if native {
        // A native sidecar: starts before the app containers, stops after them.
        fields.push(("restartPolicy", "Always".into()));
    }
    fields.extend([
        (
            "args",
            Value::Sequence(vec![
                "run".into(),
                "--config".into(),
                format!("{CONFIG_DIR}/jetway.yaml").into(),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![port("jetway-api", 4480), port(METRICS_PORT, 4481)]),
        ),
    ]);
    fields.extend(probes());
    fields.extend([
        (
            "resources",
            yaml(&[
                (
                    "requests",
                    yaml(&[("cpu", "10m".into()), ("memory", "24Mi".into())]),
                ),
                // No CPU limit: CFS throttling would add latency spikes to every publish.
                ("limits", yaml(&[("memory", "64Mi".into())])),
            ]),
        ),
        (
            "securityContext",
            yaml(&[
                ("runAsNonRoot", true.into()),
                ("runAsUser", 65532u64.into()),
                ("runAsGroup", 65532u64.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    yaml(&[("drop", Value::Sequence(vec!["ALL".into()]))]),
                ),
                ("seccompProfile", yaml(&[("type", "RuntimeDefault".into())])),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ]);
    yaml(&fields)
}

/// A mapping from literal pairs, keeping their order.
fn yaml(pairs: &[(&str, Value)]) -> Value {
    let mut map = Mapping::new();
    for (key, value) in pairs {
        map.insert(Value::from(*key), value.clone());
    }
    Value::Mapping(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InjectOptions {
        InjectOptions::default()
    }

    #[test]
    fn pod_gets_native_sidecar() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    jetway.io/inject: enabled\n    jetway.io/config: cfg\nspec:\n  containers:\n  - name: app\n    image: app\n";
        let out = inject(input, &opts()).expect("injects");
        let v: Value = serde_norway::from_str(&out).expect("yaml");
        let init = &v["spec"]["initContainers"][0];
        assert_eq!(init["name"], "jetway");
        assert_eq!(init["restartPolicy"], "Always");
        assert_eq!(init["image"], DEFAULT_IMAGE);
        assert_eq!(v["spec"]["volumes"][0]["configMap"]["name"], "cfg");
    }

    #[test]
    fn empty_image_means_default() {
        let input = "kind: Pod\nmetadata:\n  annotations: {jetway.io/inject: enabled, jetway.io/config: c}\nspec: {containers: [{name: a}]}\n";
        let out = inject(
            input,
            &InjectOptions {
                image: String::new(),
                legacy: false,
            },
        )
        .expect("injects");
        assert!(out.contains(DEFAULT_IMAGE));
    }

    /// The sidecar as an older jetway wrote it: readiness on `/readyz`.
    const OLD_SIDECAR: &str = "kind: Pod\nmetadata:\n  annotations: {jetway.io/inject: enabled, jetway.io/config: c}\nspec:\n  containers: [{name: app}]\n  initContainers:\n  - name: jetway\n    restartPolicy: Always\n    startupProbe: {httpGet: {path: /readyz, port: jetway-metrics}, periodSeconds: 2, failureThreshold: 60}\n    readinessProbe: {httpGet: {path: /readyz, port: jetway-metrics}, periodSeconds: 5}\n";

    #[test]
    fn probes_gate_the_start_on_readyz_and_readiness_on_healthz() {
        let probes: Mapping = probes()
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect();
        let path = |key: &str| probes[key]["httpGet"]["path"].as_str().map(str::to_owned);
        assert_eq!(path("startupProbe").as_deref(), Some("/readyz"));
        assert_eq!(path("readinessProbe").as_deref(), Some("/healthz"));
        assert_eq!(path("livenessProbe").as_deref(), Some("/healthz"));
        let startup = &probes["startupProbe"];
        let budget = startup["periodSeconds"].as_u64().unwrap_or(0)
            * startup["failureThreshold"].as_u64().unwrap_or(0);
        assert!(budget >= 180, "a slow NATS gets minutes, not {budget} s");
    }

    #[test]
    fn reinjection_rewrites_the_probes_of_an_older_jetway() {
        let out = inject(OLD_SIDECAR, &opts()).expect("injects");
        let v: Value = serde_norway::from_str(&out).expect("yaml");
        let sidecar = &v["spec"]["initContainers"][0];
        for (key, probe) in probes() {
            assert_eq!(sidecar[key], probe, "{key}");
        }
        // Nothing else of the container changed, and no second one came.
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert!(sidecar.get("image").is_none());
        assert_eq!(
            v["spec"]["initContainers"].as_sequence().map(Vec::len),
            Some(1)
        );
        assert!(v["spec"].get("volumes").is_none());
    }

    #[test]
    fn a_sidecar_with_other_probes_is_left_alone() {
        let input = OLD_SIDECAR.replace("jetway-metrics", "9000");
        let before: Value = serde_norway::from_str(&input).expect("yaml");
        let out = inject(&input, &opts()).expect("injects");
        let after: Value = serde_norway::from_str(&out).expect("yaml");
        assert_eq!(after, before);
    }

    #[test]
    fn invalid_yaml_is_an_error() {
        assert!(matches!(
            inject("kind: [", &opts()),
            Err(InjectError::Yaml(_))
        ));
    }

    #[test]
    fn malformed_containers_is_an_error_not_a_panic() {
        let input = "kind: Pod\nmetadata:\n  annotations: {jetway.io/inject: enabled, jetway.io/config: c}\nspec: {containers: 3}\n";
        assert!(matches!(
            inject(input, &opts()),
            Err(InjectError::Malformed { .. })
        ));
        let input = "kind: Deployment\nspec: {template: {metadata: {annotations: {jetway.io/inject: enabled, jetway.io/config: c}}, spec: 7}}\n";
        assert!(matches!(
            inject(input, &opts()),
            Err(InjectError::Malformed { .. })
        ));
    }
}
