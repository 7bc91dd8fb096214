//! Draws `benches/plots/overhead.svg` from criterion baselines of
//! `benches/overhead.rs`: time per request of the cache-hit rows, the
//! median of the runs' medians with their min–max, the plain rows and the
//! `block_on` rows (where tower-sessions is) as two sections on one axis.
//!
//! `bash benches/overhead.sh` runs the bench three times (baselines `run1`,
//! `run2`, `run3`) and then this. Alone: `cargo bench --all-features
//! --bench plots [-- BASELINE…]` (default `run1 run2 run3`). Baselines are
//! read from `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
//! `target/criterion` of this package.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use common::svg::{self, Bars, Row, Section, Spread};

/// Criterion's group of the rows below.
const GROUP: &str = "overhead";

/// Criterion id, label, colour of each row; the plain rows.
const PLAIN: [(&str, &str, &str); 7] = [
    ("bare", "bare service", svg::BARE),
    (
        "session_refresh_cache_hit",
        "SessionRefreshLayer (renewing)",
        svg::OURS,
    ),
    (
        "session_validate_only_cache_hit",
        "SessionRefreshLayer::validate_only",
        svg::OURS,
    ),
    (
        "require_subscription_cache_hit",
        "RequireSubscriptionLayer",
        svg::OURS,
    ),
    (
        "session_and_subscription_cache_hit",
        "both layers stacked",
        svg::OURS,
    ),
    (
        "session_refresh_cache_hit_4096_sessions",
        "SessionRefreshLayer, 4 096 sessions",
        svg::OURS,
    ),
    (
        "require_subscription_cache_hit_4096_organizations",
        "RequireSubscriptionLayer, 4 096 orgs",
        svg::OURS,
    ),
];

/// The rows driven through `Runtime::block_on`, as tower-sessions must be.
const BLOCK_ON: [(&str, &str, &str); 4] = [
    ("bare_block_on", "bare service", svg::BARE),
    (
        "session_refresh_cache_hit_block_on",
        "SessionRefreshLayer (renewing)",
        svg::OURS,
    ),
    (
        "tower_sessions_read",
        "tower-sessions, read one value",
        svg::THEIRS,
    ),
    (
        "tower_sessions_always_save",
        "tower-sessions, always_save",
        svg::THEIRS,
    ),
];

fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("criterion")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
    }
}

/// Why a median could not be read.
enum Failure {
    /// No `estimates.json` for this baseline and row.
    Missing { baseline: String, function: String },
    /// One there, but not as criterion writes it.
    Unreadable(String),
}

/// Criterion's median estimate, in ns, of `function` in `baseline`.
fn median(home: &Path, function: &str, baseline: &str) -> Result<f64, Failure> {
    let path = home
        .join(GROUP)
        .join(function)
        .join(baseline)
        .join("estimates.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Missing {
                baseline: baseline.to_owned(),
                function: function.to_owned(),
            })
        }
        Err(error) => {
            return Err(Failure::Unreadable(format!(
                "cannot read {}: {error}",
                path.display()
            )))
        }
    };
    let estimates: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| Failure::Unreadable(format!("{} is not JSON: {error}", path.display())))?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| {
            Failure::Unreadable(format!("{} has no median.point_estimate", path.display()))
        })
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; any other argument is a baseline.
    let mut baselines: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let named = !baselines.is_empty();
    if !named {
        baselines = ["run1", "run2", "run3"].map(String::from).to_vec();
    }
    let home = criterion_home();

    let mut failures = Vec::new();
    let mut section = |heading: &str, rows: &[(&str, &str, &'static str)]| Section {
        heading: Some(heading.to_owned()),
        rows: rows
            .iter()
            .filter_map(|(function, label, color)| {
                let medians: Vec<f64> = baselines
                    .iter()
                    .filter_map(|baseline| {
                        median(&home, function, baseline)
                            .map_err(|failure| failures.push(failure))
                            .ok()
                    })
                    .collect();
                (medians.len() == baselines.len()).then(|| Row {
                    label: label.to_string(),
                    spread: Spread::of(&medians).expect("one baseline at least"),
                    color,
                    target: None,
                })
            })
            .collect(),
    };
    let sections = vec![
        section("Cache hits, the future polled once", &PLAIN),
        section(
            "Driven by Runtime::block_on (tower-sessions needs a runtime)",
            &BLOCK_ON,
        ),
    ];
    let nothing_saved = sections.iter().all(|section| section.rows.is_empty())
        && failures
            .iter()
            .all(|failure| matches!(failure, Failure::Missing { .. }));
    if !named && nothing_saved {
        // A plain `cargo bench`, which saves no baselines: nothing to draw,
        // and nothing wrong.
        eprintln!(
            "plots: no baselines run1..run3 under {}; `bash benches/overhead.sh` saves them and draws the plot",
            home.join(GROUP).display()
        );
        return ExitCode::SUCCESS;
    }
    if !failures.is_empty() {
        let rows = PLAIN.len() + BLOCK_ON.len();
        for baseline in &baselines {
            let missing: Vec<&str> = failures
                .iter()
                .filter_map(|failure| match failure {
                    Failure::Missing {
                        baseline: of,
                        function,
                    } if of == baseline => Some(function.as_str()),
                    _ => None,
                })
                .collect();
            if missing.len() == rows {
                eprintln!(
                    "baseline `{baseline}` is missing: no {}",
                    home.join(GROUP)
                        .join("*")
                        .join(baseline)
                        .join("estimates.json")
                        .display()
                );
            } else if !missing.is_empty() {
                eprintln!(
                    "baseline `{baseline}` lacks {} of {GROUP}/: {}",
                    if missing.len() == 1 {
                        "this row"
                    } else {
                        "these rows"
                    },
                    missing.join(", ")
                );
            }
        }
        for failure in &failures {
            if let Failure::Unreadable(message) = failure {
                eprintln!("{message}");
            }
        }
        eprintln!(
            "`bash benches/overhead.sh` runs benches/overhead.rs as baselines run1, run2 and run3"
        );
        return ExitCode::FAILURE;
    }

    println!(
        "| row | ns per request: median (min–max) of {} runs' medians |",
        baselines.len()
    );
    println!("|---|---|");
    for section in &sections {
        for row in &section.rows {
            println!("| {} | {} |", row.label, row.spread.text());
        }
    }

    let chart = Bars {
        title: "Time per request, cache hits, against tower-sessions".to_owned(),
        notes: vec![
            format!(
                "benches/overhead.rs; bars: median of the criterion medians of baselines {}; whiskers: min–max.",
                baselines.join(", ")
            ),
            "Same request through each; the bare service's row is the floor the layers add to."
                .to_owned(),
        ],
        unit: "ns per request".to_owned(),
        legend: vec![
            (svg::BARE, "bare service".to_owned()),
            (svg::OURS, "tower-saas-guard".to_owned()),
            (svg::THEIRS, "tower-sessions 0.15 (memory store)".to_owned()),
        ],
        sections,
        reference: None,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plots/overhead.svg");
    match svg::write(&path, &chart.render()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("could not write {}: {error}", path.display());
            ExitCode::FAILURE
        }
    }
}
