//! What the commands print: kubectl-style tables for people, the API's JSON
//! on one line for scripts (`--json`).

use serde_json::Value;

pub(super) fn json_line(v: &Value) -> String {
    format!("{v}\n")
}

/// Columns padded to their widest cell, two spaces apart (kubectl style).
pub(super) fn table(headings: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headings.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub(super) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["order-emails".into(), "running".into()],
                vec!["a".into(), "paused".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          STATE\norder-emails  running\na             paused\n"
        );
    }
}
