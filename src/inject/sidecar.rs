//! What `jetway inject` adds to a pod spec: the sidecar container, its
//! probes (SPEC section 7) and the volumes of its config and credentials.

use serde_norway::{Mapping, Value};

use super::{CONFIG_DIR, CONFIG_VOLUME, CONTAINER_NAME, CREDENTIALS_DIR, CREDENTIALS_VOLUME};

/// Rewrites the probes of the `jetway` containers of a pod spec to the
/// current ones ([`probes`]), when they are jetway's: at least one of them is
/// an HTTP probe on the `jetway-metrics` port, as every jetway so far wrote
/// them. A container without such a probe was written by hand some other
/// way and is left as it is.
pub(super) fn update_probes(spec: &mut Value) {
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

pub(super) fn config_volume(config_map: &str) -> Value {
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

pub(super) fn credentials_volume(secret: &str) -> Value {
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
pub(super) fn probes() -> [(&'static str, Value); 3] {
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
pub(super) fn sidecar_container(image: &str, credentials: bool, native: bool) -> Value {
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
}
