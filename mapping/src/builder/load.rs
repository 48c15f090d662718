//! The load file of `cellmap build --load` and `cellmap drain --load`: each
//! cell's figures (CPU, p99 latency, tenant count) against capacity
//! thresholds. A cell's **headroom** is the smallest `1 − figure / threshold`
//! over the figures it gives, clamped to 0 … 1; a cell at or over any of its
//! thresholds has no headroom and is **closed** to new tenants (`SPEC.md`,
//! "Placement by load").

use super::{UniqueMap, object};
use crate::error::{ObjectOnly, PathError, from_json_with_path, key_path};
use crate::snapshot::{CellDoc, CellState};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The only load file format so far.
pub const LOAD_FORMAT: u32 = 1;

/// A load figure's dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// CPU use as a fraction of the cell's CPU, 0 … 1.
    Cpu,
    /// p99 request latency in milliseconds.
    P99Ms,
    /// Tenants homed in the cell.
    Tenants,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::Cpu, Dimension::P99Ms, Dimension::Tenants];

    /// The field name in the load file.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Cpu => "cpu",
            Dimension::P99Ms => "p99_ms",
            Dimension::Tenants => "tenants",
        }
    }
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    // `null` is refused like any other wrong type: a figure is given or left out.
    T::deserialize(d).map(Some)
}

/// One value per dimension, each optional: a cell's figures, or thresholds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<f64>,
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_ms: Option<f64>,
    #[serde(
        default,
        deserialize_with = "some",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenants: Option<u64>,
}

impl Figures {
    pub fn get(&self, dimension: Dimension) -> Option<f64> {
        match dimension {
            Dimension::Cpu => self.cpu,
            Dimension::P99Ms => self.p99_ms,
            Dimension::Tenants => self.tenants.map(|t| t as f64),
        }
    }
}

/// A cell's entry: its figures and, optionally, its own thresholds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellEntry {
    #[serde(default, deserialize_with = "some")]
    cpu: Option<f64>,
    #[serde(default, deserialize_with = "some")]
    p99_ms: Option<f64>,
    #[serde(default, deserialize_with = "some")]
    tenants: Option<u64>,
    #[serde(default, deserialize_with = "object")]
    thresholds: Figures,
}

/// The document as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadDoc {
    format: u32,
    #[serde(default, deserialize_with = "object")]
    thresholds: Figures,
    cells: UniqueMap<ObjectOnly<CellEntry>>,
}

/// A figure at or over its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Breach {
    pub dimension: Dimension,
    pub figure: f64,
    pub threshold: f64,
}

/// One cell's validated load.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellLoad {
    pub figures: Figures,
    /// The thresholds that apply to this cell (its own, else the file's).
    pub thresholds: Figures,
    /// min over the given figures of `1 − figure / threshold`, in 0 … 1.
    pub headroom: f64,
    /// The thresholds met or exceeded; not empty ⇔ closed to new tenants.
    pub closed_by: Vec<Breach>,
}

impl CellLoad {
    /// At or over a threshold: takes no new tenants.
    pub fn is_closed(&self) -> bool {
        !self.closed_by.is_empty()
    }
}

/// A validated load file.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    cells: BTreeMap<String, CellLoad>,
}

impl Load {
    /// Parses and validates a load file; errors name the JSON path.
    pub fn parse(bytes: &[u8]) -> Result<Load, PathError> {
        let doc = from_json_with_path::<ObjectOnly<LoadDoc>>(bytes)?.0;
        if doc.format != LOAD_FORMAT {
            return Err(PathError::new(
                "$.format",
                format!("unknown format {}; expected {LOAD_FORMAT}", doc.format),
            ));
        }
        check_thresholds(&doc.thresholds, &["thresholds"])?;
        let mut cells = BTreeMap::new();
        for (id, ObjectOnly(entry)) in doc.cells.0 {
            let at = |field: &str| key_path(["cells", id.as_str(), field]);
            check_thresholds(&entry.thresholds, &["cells", id.as_str(), "thresholds"])?;
            let figures = Figures {
                cpu: entry.cpu,
                p99_ms: entry.p99_ms,
                tenants: entry.tenants,
            };
            if Dimension::ALL.iter().all(|&d| figures.get(d).is_none()) {
                return Err(PathError::new(
                    key_path(["cells", id.as_str()]),
                    "no figures: give at least one of cpu, p99_ms, tenants",
                ));
            }
            let mut thresholds = Figures::default();
            let mut headroom = 1.0f64;
            let mut closed_by = Vec::new();
            for dimension in Dimension::ALL {
                let Some(figure) = figures.get(dimension) else {
                    continue;
                };
                let name = dimension.as_str();
                check_figure(dimension, figure).map_err(|e| PathError::new(at(name), e))?;
                let threshold = entry
                    .thresholds
                    .get(dimension)
                    .or(doc.thresholds.get(dimension))
                    .ok_or_else(|| {
                        PathError::new(
                            at(name),
                            format!(
                                "no threshold for {name}: set $.thresholds.{name} or this cell's thresholds.{name}"
                            ),
                        )
                    })?;
                match dimension {
                    Dimension::Cpu => thresholds.cpu = Some(threshold),
                    Dimension::P99Ms => thresholds.p99_ms = Some(threshold),
                    Dimension::Tenants => thresholds.tenants = Some(threshold as u64),
                }
                headroom = headroom.min(1.0 - figure / threshold);
                if figure >= threshold {
                    closed_by.push(Breach {
                        dimension,
                        figure,
                        threshold,
                    });
                }
            }
            let headroom = if closed_by.is_empty() {
                headroom.clamp(0.0, 1.0)
            } else {
                0.0
            };
            cells.insert(
                id,
                CellLoad {
                    figures,
                    thresholds,
                    headroom,
                    closed_by,
                },
            );
        }
        Ok(Load { cells })
    }

    /// The load of a cell, if the file gives it.
    pub fn cell(&self, id: &str) -> Option<&CellLoad> {
        self.cells.get(id)
    }

    /// Every cell in the file, by id.
    pub fn cells(&self) -> &BTreeMap<String, CellLoad> {
        &self.cells
    }

    /// Checks the file against the cells it places: every cell it names
    /// exists, and every active cell but `exempt` (the cell being drained)
    /// has figures. A cell without figures is refused rather than guessed:
    /// taken as idle it would draw every new tenant, taken as full it would
    /// get none. Paths point into the load file; `what` names the other
    /// document ("spec", "snapshot").
    pub fn check_cells(
        &self,
        cells: &[CellDoc],
        exempt: Option<&str>,
        what: &str,
    ) -> Result<(), PathError> {
        for id in self.cells.keys() {
            if !cells.iter().any(|c| &c.id == id) {
                return Err(PathError::new(
                    key_path(["cells", id.as_str()]),
                    format!("unknown cell {id:?}: not in the {what}"),
                ));
            }
        }
        if let Some(missing) = cells.iter().find(|c| {
            c.state == CellState::Active
                && Some(c.id.as_str()) != exempt
                && !self.cells.contains_key(&c.id)
        }) {
            return Err(PathError::new(
                "$.cells",
                format!(
                    "no figures for active cell {:?}: every active cell needs its figures (a cell with no load yet: \"{}\": {{\"tenants\": 0}})",
                    missing.id, missing.id
                ),
            ));
        }
        Ok(())
    }

    /// The weight a cell takes new slots by: `weight × headroom` for an
    /// active cell (0 when closed), its plain weight otherwise (draining and
    /// disabled cells take no new slots whatever their weight).
    pub fn effective_weight(&self, cell: &CellDoc) -> f64 {
        if cell.state != CellState::Active {
            return cell.weight;
        }
        let headroom = self.cells.get(&cell.id).map_or(0.0, |c| c.headroom);
        cell.weight * headroom
    }
}

fn check_figure(dimension: Dimension, figure: f64) -> Result<(), String> {
    if !figure.is_finite() || figure < 0.0 {
        return Err(format!("must be a finite number ≥ 0, got {figure}"));
    }
    if dimension == Dimension::Cpu && figure > 1.0 {
        return Err(format!(
            "cpu is a fraction of the cell's CPU, 0 … 1 (write 0.9 for 90 %), got {figure}"
        ));
    }
    Ok(())
}

fn check_thresholds(thresholds: &Figures, at: &[&str]) -> Result<(), PathError> {
    for dimension in Dimension::ALL {
        let Some(t) = thresholds.get(dimension) else {
            continue;
        };
        let path = || key_path(at.iter().copied().chain([dimension.as_str()]));
        if !t.is_finite() || t <= 0.0 {
            return Err(PathError::new(
                path(),
                format!("a threshold must be a finite number > 0, got {t}"),
            ));
        }
        if dimension == Dimension::Cpu && t > 1.0 {
            return Err(PathError::new(
                path(),
                format!("cpu is a fraction of the cell's CPU, 0 … 1 (write 0.7 for 70 %), got {t}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_the_smallest_over_the_given_figures() {
        let load = Load::parse(
            br#"{"format": 1, "thresholds": {"cpu": 0.8, "p99_ms": 200, "tenants": 100},
                 "cells": {"a": {"cpu": 0.4, "p99_ms": 150},
                           "b": {"tenants": 100},
                           "c": {"cpu": 0.2, "thresholds": {"cpu": 0.4}},
                           "d": {"tenants": 0}}}"#,
        )
        .unwrap();
        let a = load.cell("a").unwrap();
        assert!((a.headroom - 0.25).abs() < 1e-12, "{}", a.headroom);
        assert!(!a.is_closed());
        let b = load.cell("b").unwrap();
        assert_eq!(b.headroom, 0.0);
        assert_eq!(b.closed_by[0].dimension, Dimension::Tenants);
        assert_eq!(load.cell("c").unwrap().headroom, 0.5);
        assert_eq!(load.cell("d").unwrap().headroom, 1.0);
    }
}
