//! A small SVG 1.1 writer for the benches' plots, with no dependency:
//! horizontal bars (one row per variant) and grouped vertical bars (series
//! over categories), each value a median with a min–max whisker.
//!
//! Layout works on estimated text widths (sans-serif, about 0.6 em per
//! character), so labels are kept short by the callers.

use std::fmt::Write as _;
use std::path::Path;

/// Width of every chart, in pixels.
pub const WIDTH: f64 = 720.0;

/// This crate's layers.
pub const OURS: &str = "#4e79a7";
/// A second series of ours (e.g. the subscription layer).
pub const OURS_2: &str = "#76b7b2";
/// The baseline we compare with (tower-sessions).
pub const THEIRS: &str = "#f28e2b";
/// The bare service.
pub const BARE: &str = "#a0a0a0";
/// Targets and reference lines.
pub const TARGET: &str = "#d62728";

const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
const INK: &str = "#222222";
const MUTED: &str = "#666666";
const GRID: &str = "#e3e3e3";
const WHISKER: &str = "#333333";

/// A median and the range of the runs it is the median of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median (the mean of the middle two for an even count), min and
    /// max of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// Every field divided by `by` (e.g. to plot thousands).
    pub fn scaled(self, by: f64) -> Spread {
        Spread {
            median: self.median / by,
            min: self.min / by,
            max: self.max / by,
        }
    }

    /// `median (min–max)`, or the median alone when the runs agree.
    pub fn text(&self) -> String {
        if number(self.min) == number(self.max) {
            number(self.median)
        } else {
            format!(
                "{} ({}–{})",
                number(self.median),
                number(self.min),
                number(self.max)
            )
        }
    }
}

/// `value` for a label: whole numbers from 100 up with thin-space
/// thousands (`12 345`), otherwise three significant digits.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 99.95 || value.fract() == 0.0 {
        let digits = format!("{:.0}", magnitude);
        let mut grouped = String::new();
        for (n, digit) in digits.chars().enumerate() {
            if n > 0 && (digits.len() - n) % 3 == 0 {
                grouped.push('\u{2009}');
            }
            grouped.push(digit);
        }
        if value < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if magnitude >= 9.995 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// One bar: a label, its spread and its colour.
pub struct Row {
    pub label: String,
    pub spread: Spread,
    pub color: &'static str,
    /// A target of this row alone, drawn as a dashed mark across the row
    /// with its label above it (e.g. `(600.0, "target ≤ 600")`).
    pub target: Option<(f64, String)>,
}

/// Rows under an optional heading.
pub struct Section {
    pub heading: Option<String>,
    pub rows: Vec<Row>,
}

/// Horizontal bars: one row per variant, sections stacked on one axis.
pub struct Bars {
    pub title: String,
    /// Lines in small print under the title.
    pub notes: Vec<String>,
    /// The axis' unit, e.g. "ns per request".
    pub unit: String,
    /// Colour and name of each kind of bar.
    pub legend: Vec<(&'static str, String)>,
    pub sections: Vec<Section>,
    /// A vertical line across every row, with its label.
    pub reference: Option<(f64, String)>,
}

/// Vertical bars grouped by category, one bar per series.
pub struct Grouped {
    pub title: String,
    pub notes: Vec<String>,
    /// The y axis' unit, e.g. "thousand requests per second".
    pub unit: String,
    /// What the categories are, e.g. "distinct sessions or organizations".
    pub x_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

/// A series of a `Grouped` chart: one point per category (`None`: not
/// measured).
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<Option<Spread>>,
}

/// Escapes text for an SVG text node or attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Estimated width of `text` at `size` px.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// A tick's label: as `number`, with as many decimals as `step` needs.
fn tick_label(tick: f64, step: f64) -> String {
    if step >= 1.0 {
        number(tick)
    } else {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{tick:.decimals$}")
    }
}

/// Axis ticks from 0: the smallest step of 1, 2 or 5 times a power of
/// ten that reaches `max` in at most six steps, and the first tick at or
/// above `max`.
pub fn ticks(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let mut power = 10f64.powf((max / 10.0).log10().floor());
    loop {
        for step in [1.0, 2.0, 5.0].map(|m| m * power) {
            let steps = (max / step - 1e-9).ceil().max(1.0);
            if steps <= 6.0 {
                return (step, steps * step);
            }
        }
        power *= 10.0;
    }
}

struct Svg {
    body: String,
}

impl Svg {
    fn new() -> Svg {
        Svg {
            body: String::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn text(
        &mut self,
        x: f64,
        y: f64,
        size: f64,
        anchor: &str,
        fill: &str,
        weight: &str,
        content: &str,
    ) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" font-weight="{weight}">{}</text>"#,
            escape(content)
        );
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, extra: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" {extra}/>"#
        );
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
            width.max(0.0),
            height.max(0.0)
        );
    }

    /// Title and notes from the top; returns the y below them.
    fn header(&mut self, title: &str, notes: &[String]) -> f64 {
        self.text(16.0, 28.0, 17.0, "start", INK, "bold", title);
        let mut y = 28.0;
        for note in notes {
            y += 17.0;
            self.text(16.0, y, 12.0, "start", MUTED, "normal", note);
        }
        y + 10.0
    }

    /// A legend row at `y`; returns the y below it.
    fn legend(&mut self, y: f64, entries: &[(&'static str, String)]) -> f64 {
        if entries.is_empty() {
            return y;
        }
        let mut x = 16.0;
        let y = y + 8.0;
        for (color, name) in entries {
            let width = 12.0 + 6.0 + text_width(name, 12.0);
            if x + width > WIDTH - 16.0 {
                x = 16.0;
            }
            self.rect(x, y, 12.0, 12.0, color);
            self.text(x + 18.0, y + 10.5, 12.0, "start", INK, "normal", name);
            x += width + 22.0;
        }
        y + 24.0
    }

    fn finish(self, height: f64) -> String {
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                "\n",
                r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h:.0}" viewBox="0 0 {w} {h:.0}" font-family="{font}">"#,
                "\n",
                r##"<rect x="0" y="0" width="{w}" height="{h:.0}" fill="#ffffff"/>"##,
                "\n{body}</svg>\n"
            ),
            w = WIDTH,
            h = height.ceil(),
            font = FONT,
            body = self.body
        )
    }
}

impl Bars {
    pub fn render(&self) -> String {
        const BAR: f64 = 16.0;
        const ROW: f64 = 28.0;
        const TARGET_ROOM: f64 = 14.0;
        let mut svg = Svg::new();
        let mut y = svg.header(&self.title, &self.notes);
        y = svg.legend(y, &self.legend);

        let rows = || self.sections.iter().flat_map(|section| &section.rows);
        let label_width = rows()
            .map(|row| text_width(&row.label, 12.0))
            .fold(0.0, f64::max)
            .min(320.0);
        let value_width = rows()
            .map(|row| text_width(&row.spread.text(), 12.0))
            .fold(0.0, f64::max);
        let left = 16.0 + label_width + 10.0;
        let right = WIDTH - 16.0 - value_width - 8.0;
        let largest = rows()
            .map(|row| {
                let target = row.target.as_ref().map_or(0.0, |(at, _)| *at);
                row.spread.max.max(row.spread.median).max(target)
            })
            .chain(self.reference.as_ref().map(|(at, _)| *at))
            .fold(0.0, f64::max);
        let (step, top) = ticks(largest);
        let x = |value: f64| left + (right - left) * value.max(0.0) / top;

        // Rows first, so their height is known; the grid goes under them.
        let mut rows_svg = Svg::new();
        if self.reference.is_some() {
            y += 16.0;
        }
        let plot_top = y;
        for section in &self.sections {
            if let Some(heading) = &section.heading {
                y += 20.0;
                rows_svg.text(16.0, y, 13.0, "start", INK, "bold", heading);
                y += 8.0;
            }
            for row in &section.rows {
                if row.target.is_some() {
                    y += TARGET_ROOM;
                }
                let middle = y + ROW / 2.0;
                rows_svg.text(
                    left - 10.0,
                    middle + 4.0,
                    12.0,
                    "end",
                    INK,
                    "normal",
                    &row.label,
                );
                let spread = row.spread;
                rows_svg.rect(
                    x(0.0),
                    middle - BAR / 2.0,
                    x(spread.median) - x(0.0),
                    BAR,
                    row.color,
                );
                if spread.max > spread.min {
                    let whisker = r#"stroke-width="1.5""#;
                    rows_svg.line(
                        (x(spread.min), middle),
                        (x(spread.max), middle),
                        WHISKER,
                        whisker,
                    );
                    for end in [spread.min, spread.max] {
                        rows_svg.line(
                            (x(end), middle - 5.0),
                            (x(end), middle + 5.0),
                            WHISKER,
                            whisker,
                        );
                    }
                }
                let end = x(spread.max.max(spread.median)) + 6.0;
                let _ = writeln!(
                    rows_svg.body,
                    r#"<text x="{end:.1}" y="{:.1}" font-size="12" fill="{INK}"><tspan font-weight="bold">{}</tspan>{}</text>"#,
                    middle + 4.0,
                    escape(&number(spread.median)),
                    if spread.text() == number(spread.median) {
                        String::new()
                    } else {
                        format!(
                            r#"<tspan fill="{MUTED}" dx="4">({}–{})</tspan>"#,
                            escape(&number(spread.min)),
                            escape(&number(spread.max))
                        )
                    }
                );
                if let Some((at, label)) = &row.target {
                    let dashed = r#"stroke-width="2" stroke-dasharray="4 3""#;
                    rows_svg.line(
                        (x(*at), middle - BAR / 2.0 - 4.0),
                        (x(*at), middle + BAR / 2.0 + 4.0),
                        TARGET,
                        dashed,
                    );
                    rows_svg.text(
                        x(*at),
                        middle - BAR / 2.0 - 7.0,
                        11.0,
                        "middle",
                        TARGET,
                        "normal",
                        label,
                    );
                }
                y += ROW;
            }
        }
        let plot_bottom = y + 4.0;

        for n in 0..=(top / step).round() as usize {
            let tick = n as f64 * step;
            svg.line(
                (x(tick), plot_top),
                (x(tick), plot_bottom),
                GRID,
                r#"stroke-width="1""#,
            );
            svg.text(
                x(tick),
                plot_bottom + 16.0,
                11.0,
                "middle",
                MUTED,
                "normal",
                &tick_label(tick, step),
            );
        }
        svg.line(
            (x(0.0), plot_top),
            (x(0.0), plot_bottom),
            MUTED,
            r#"stroke-width="1""#,
        );
        svg.body.push_str(&rows_svg.body);
        if let Some((at, label)) = &self.reference {
            svg.line(
                (x(*at), plot_top - 4.0),
                (x(*at), plot_bottom),
                TARGET,
                r#"stroke-width="1.5" stroke-dasharray="5 4""#,
            );
            svg.text(
                x(*at),
                plot_top - 8.0,
                11.0,
                "middle",
                TARGET,
                "normal",
                label,
            );
        }
        svg.text(
            (left + right) / 2.0,
            plot_bottom + 36.0,
            12.0,
            "middle",
            INK,
            "normal",
            &self.unit,
        );
        svg.finish(plot_bottom + 50.0)
    }
}

impl Grouped {
    pub fn render(&self) -> String {
        const PLOT_HEIGHT: f64 = 320.0;
        let mut svg = Svg::new();
        let mut y = svg.header(&self.title, &self.notes);
        let legend: Vec<_> = self
            .series
            .iter()
            .map(|series| (series.color, series.name.clone()))
            .collect();
        y = svg.legend(y, &legend);

        let largest = self
            .series
            .iter()
            .flat_map(|series| series.points.iter().flatten())
            .map(|point| point.max.max(point.median))
            .fold(0.0, f64::max);
        let (step, top) = ticks(largest);
        let plot_top = y + 18.0;
        let plot_bottom = plot_top + PLOT_HEIGHT;
        let tick_width = text_width(&number(top), 11.0);
        let left = 16.0 + 16.0 + tick_width + 10.0;
        let right = WIDTH - 16.0;
        let to_y = |value: f64| plot_bottom - PLOT_HEIGHT * value.max(0.0) / top;

        for n in 0..=(top / step).round() as usize {
            let tick = n as f64 * step;
            svg.line(
                (left, to_y(tick)),
                (right, to_y(tick)),
                GRID,
                r#"stroke-width="1""#,
            );
            svg.text(
                left - 6.0,
                to_y(tick) + 4.0,
                11.0,
                "end",
                MUTED,
                "normal",
                &tick_label(tick, step),
            );
        }
        svg.line(
            (left, plot_bottom),
            (right, plot_bottom),
            MUTED,
            r#"stroke-width="1""#,
        );
        let _ = writeln!(
            svg.body,
            r#"<text x="0" y="0" font-size="12" text-anchor="middle" fill="{INK}" transform="translate({:.1} {:.1}) rotate(-90)">{}</text>"#,
            20.0,
            (plot_top + plot_bottom) / 2.0,
            escape(&self.unit)
        );

        let groups = self.categories.len().max(1) as f64;
        let group_width = (right - left) / groups;
        let count = self.series.len().max(1) as f64;
        let gap = 4.0;
        let bar = ((group_width * 0.8 - gap * (count - 1.0)) / count).min(48.0);
        let whisker = r#"stroke-width="1.5""#;
        for (n, category) in self.categories.iter().enumerate() {
            let center = left + group_width * (n as f64 + 0.5);
            let start = center - (bar * count + gap * (count - 1.0)) / 2.0;
            for (s, series) in self.series.iter().enumerate() {
                let bar_left = start + s as f64 * (bar + gap);
                let middle = bar_left + bar / 2.0;
                let Some(point) = series.points.get(n).copied().flatten() else {
                    svg.text(
                        middle,
                        plot_bottom - 4.0,
                        10.0,
                        "middle",
                        MUTED,
                        "normal",
                        "n/a",
                    );
                    continue;
                };
                svg.rect(
                    bar_left,
                    to_y(point.median),
                    bar,
                    plot_bottom - to_y(point.median),
                    series.color,
                );
                if point.max > point.min {
                    svg.line(
                        (middle, to_y(point.min)),
                        (middle, to_y(point.max)),
                        WHISKER,
                        whisker,
                    );
                    for end in [point.min, point.max] {
                        svg.line(
                            (middle - 5.0, to_y(end)),
                            (middle + 5.0, to_y(end)),
                            WHISKER,
                            whisker,
                        );
                    }
                }
                let label = number(point.median);
                let size = if text_width(&label, 10.0) > bar + gap {
                    9.0
                } else {
                    10.0
                };
                svg.text(
                    middle,
                    to_y(point.max.max(point.median)) - 5.0,
                    size,
                    "middle",
                    INK,
                    "bold",
                    &label,
                );
            }
            svg.text(
                center,
                plot_bottom + 18.0,
                12.0,
                "middle",
                INK,
                "normal",
                category,
            );
        }
        svg.text(
            (left + right) / 2.0,
            plot_bottom + 40.0,
            12.0,
            "middle",
            INK,
            "normal",
            &self.x_label,
        );
        svg.finish(plot_bottom + 56.0)
    }
}

/// Writes `svg` to `path` (creating its folder) and says so on stdout.
pub fn write(path: &Path, svg: &str) -> std::io::Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    std::fs::write(path, svg)?;
    println!("wrote {}", path.display());
    Ok(())
}
