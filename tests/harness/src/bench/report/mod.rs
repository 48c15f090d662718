//! Samples, their summaries, the goals, and the BENCHMARKS.md / SVG output:
//! `summary` turns wrk runs into per-case figures, `goals` judges them,
//! `table` writes the Markdown, `chart` the SVG, and `method` holds
//! the method text.

mod calls;
mod chart;
mod goals;
mod method;
mod summary;
mod table;

pub use calls::{CallCost, call_costs, slope};
pub use goals::{Goal, Verdict, goals};
pub use summary::{Memory, RoundRatio, RunInfo, Sample, Spreads, Summary, median, summarize};

use super::anatomy::HostCalls;
use super::cases::Case;
use super::inner::InnerBenches;
use super::propagation::PropagationReport;

/// Everything BENCHMARKS.md shows.
pub struct Report<'a> {
    pub info: &'a RunInfo,
    pub cases: &'a [Case],
    pub samples: &'a [Sample],
    pub summaries: &'a [Summary],
    pub goals: &'a [Goal],
    pub memory: &'a [Memory],
    pub propagation: Option<&'a PropagationReport>,
    pub host_calls: Option<&'a HostCalls>,
    pub inner: &'a InnerBenches,
    pub svg_name: Option<&'a str>,
}
