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
//!
//! `workload` finds the pod templates of the workloads and adds to their
//! pod spec; `sidecar` builds what is added: the container, its probes and
//! its volumes.

mod sidecar;
mod workload;

use serde::Deserialize;
use serde_norway::Value;

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
        workload::inject_resource(&mut value, opts, index + 1)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_norway::to_string(&value).map_err(|e| InjectError::Yaml(e.to_string()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar::probes;

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
