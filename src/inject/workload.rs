//! The walk: every workload kind to its pod template, the annotations
//! read into a plan, and the plan added to the pod spec (idempotently).

use serde_norway::Value;

use super::sidecar::{config_volume, credentials_volume, sidecar_container, update_probes};
use super::{
    InjectError, InjectOptions, ANNOTATION_CONFIG, ANNOTATION_CREDENTIALS_SECRET, ANNOTATION_IMAGE,
    ANNOTATION_INJECT, CONFIG_VOLUME, CONTAINER_NAME, CREDENTIALS_VOLUME, DEFAULT_IMAGE,
};

/// Injects one resource; `kind: List` (and `*List` kinds) recurse into `items`.
pub(super) fn inject_resource(
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
