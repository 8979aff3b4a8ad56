//! `schemas`: the schema registry (SPEC 2, 9). The section is read into
//! the registry's own [`SchemasConfig`], whose rules (`problems`) live
//! beside it in `crate::schemas::config`, next to the modes they name; this
//! file only hands its problems to the config's.

use serde_norway::Value;

use super::Problem;
use crate::schemas::SchemasConfig;

/// The `schemas:` section, with its problems added to the config's.
pub(super) fn parse(raw: Option<&Value>, problems: &mut Vec<Problem>) -> Option<SchemasConfig> {
    let raw = raw?;
    match serde_norway::from_value::<SchemasConfig>(raw.clone()) {
        Ok(config) => {
            problems.extend(
                config
                    .problems("schemas")
                    .into_iter()
                    .map(|(path, message)| Problem { path, message }),
            );
            Some(config)
        }
        Err(e) => {
            problems.push(Problem {
                path: "schemas".into(),
                message: e.to_string(),
            });
            None
        }
    }
}
