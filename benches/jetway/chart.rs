//! The SVG chart: every throughput figure as its ratio to its baseline,
//! with the baseline (1.0) and the target marked.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Results;
use crate::Res;

pub fn draw(r: &Results, path: &Path) -> Res<()> {
    // (label, ratio, target)
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    for t in r.targets.iter().filter(|t| t.unit == "x") {
        rows.push((t.name.clone(), t.value, Some(t.limit)));
    }
    for c in r.publish.iter().filter(|c| c.conns < 16) {
        rows.push((
            format!(
                "single publish / bare bridge, {} B x {} conn (info)",
                c.payload, c.conns
            ),
            c.ratio,
            None,
        ));
    }
    let max = rows.iter().map(|r| r.1).fold(1.5, f64::max).min(4.0);
    let (w, row_h, top, label_w) = (1100u32, 22u32, 50u32, 560u32);
    let h = top + row_h * rows.len() as u32 + 40;
    let area = SVGBackend::new(path, (w, h)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    area.fill(&WHITE).map_err(e)?;
    let title = format!(
        "jetway / baseline, same run ({} mode, {})",
        r.meta.mode, r.meta.started_at
    );
    area.draw(&Text::new(title, (10, 15), ("sans-serif", 18).into_font()))
        .map_err(e)?;
    let bar_w = (w - label_w - 40) as f64;
    let x_of = |v: f64| label_w as i32 + (v.clamp(0.0, max) / max * bar_w) as i32;
    for (i, (label, ratio, target)) in rows.iter().enumerate() {
        let y = (top + row_h * i as u32) as i32;
        let ok = target.map(|t| *ratio >= t);
        let color = match ok {
            Some(true) => RGBColor(60, 150, 80),
            Some(false) => RGBColor(200, 60, 50),
            None => RGBColor(120, 120, 160),
        };
        area.draw(&Text::new(
            label.clone(),
            (10, y + 4),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(e)?;
        area.draw(&Rectangle::new(
            [(x_of(0.0), y + 2), (x_of(*ratio), y + row_h as i32 - 4)],
            color.filled(),
        ))
        .map_err(e)?;
        area.draw(&Text::new(
            format!("{ratio:.2}"),
            (x_of(*ratio) + 4, y + 4),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(e)?;
        if let Some(t) = target {
            let x = x_of(*t);
            area.draw(&PathElement::new(
                vec![(x, y), (x, y + row_h as i32 - 2)],
                BLACK.stroke_width(2),
            ))
            .map_err(e)?;
        }
    }
    let bottom = (top + row_h * rows.len() as u32) as i32;
    let one = x_of(1.0);
    area.draw(&PathElement::new(
        vec![(one, top as i32 - 6), (one, bottom)],
        BLUE.stroke_width(1),
    ))
    .map_err(e)?;
    for v in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
        .into_iter()
        .filter(|v| *v <= max)
    {
        area.draw(&Text::new(
            format!("{v:.1}"),
            (x_of(v) - 8, bottom + 6),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(e)?;
    }
    area.draw(&Text::new(
        "bar: ratio to baseline; blue line: baseline (1.0); black tick: target".to_string(),
        (10, bottom + 22),
        ("sans-serif", 12).into_font(),
    ))
    .map_err(e)?;
    area.present().map_err(e)?;
    Ok(())
}
