//! State normalization and action un-normalization with openpi's `norm_stats.json`
//! (`openpi/shared/normalize.py`, `openpi/transforms.py`).
//!
//! File format (`normalize.serialize_json`): `{"norm_stats": {"state": {"mean": [...],
//! "std": [...], "q01": [...], "q99": [...]}, "actions": {...}}}`; `q01`/`q99` may be missing
//! or null (only quantile mode needs them). A file without the `norm_stats` wrapper is accepted
//! too.
//!
//! Formulas (`transforms.Normalize` / `transforms.Unnormalize`), with stats sliced to the
//! vector's length:
//!
//! | mode | normalize | un-normalize |
//! |---|---|---|
//! | z-score (π0 default) | `(x - mean) / (std + 1e-6)` | `x * (std + 1e-6) + mean` |
//! | quantile (π0.5, FAST) | `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` | `(x + 1) / 2 * (q99 - q01 + 1e-6) + q01` |
//!
//! openpi normalizes the robot's state before `PadStatesAndActions` zero-pads it to the model's
//! `action_dim`, and un-normalizes the model's actions before the robot's output transform cuts
//! them to the robot's dimension: [`Normalizer::normalize_state`] and
//! [`Normalizer::unnormalize_actions`] do the same in one call each. Stats are f64 as numpy
//! reads them from JSON; the arithmetic is f64, the results f32.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Error, Result};

/// openpi's epsilon in every normalization formula.
pub const EPS: f64 = 1e-6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NormMode {
    /// `(x - mean) / (std + 1e-6)`: openpi's default, used by π0 checkpoints.
    #[default]
    ZScore,
    /// `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`: `use_quantile_norm`, π0.5 and π0-FAST.
    Quantile,
}

impl FromStr for NormMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "zscore" | "z-score" | "z_score" | "mean_std" | "meanstd" => Ok(NormMode::ZScore),
            "quantile" | "quantiles" => Ok(NormMode::Quantile),
            _ => Err(Error::Parameter {
                name: "norm_mode".into(),
                reason: format!("`{s}` is not a normalization mode (zscore or quantile)"),
            }),
        }
    }
}

/// Statistics of one vector (`NormStats` in openpi).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub q01: Option<Vec<f64>>,
    pub q99: Option<Vec<f64>>,
}

impl Stats {
    pub fn len(&self) -> usize {
        self.mean.len()
    }
    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }
    fn has_quantiles(&self) -> bool {
        self.q01.is_some() && self.q99.is_some()
    }
}

/// The `state` and `actions` statistics of a `norm_stats.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    pub state: Stats,
    pub actions: Stats,
}

fn stats_err(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::NormStats(format!("{source}: {msg}"))
}

fn parse_vec(v: &Value, source: &str, what: &str) -> Result<Vec<f64>> {
    let arr = v
        .as_array()
        .ok_or_else(|| stats_err(source, format!("`{what}` is not a list of numbers")))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            let x = x
                .as_f64()
                .ok_or_else(|| stats_err(source, format!("`{what}[{i}]` is not a number: {x}")))?;
            if !x.is_finite() {
                return Err(stats_err(source, format!("`{what}[{i}]` is {x}")));
            }
            Ok(x)
        })
        .collect()
}

fn parse_stats(v: &Value, source: &str, key: &str) -> Result<Stats> {
    if !v.is_object() {
        return Err(stats_err(source, format!("`{key}` is not an object")));
    }
    let field = |name: &str, required: bool| -> Result<Option<Vec<f64>>> {
        match v.get(name) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(stats_err(source, format!("`{key}` has no `{name}`"))),
            Some(x) => parse_vec(x, source, &format!("{key}.{name}")).map(Some),
        }
    };
    let mean = field("mean", true)?.expect("required");
    let std = field("std", true)?.expect("required");
    let q01 = field("q01", false)?;
    let q99 = field("q99", false)?;
    if mean.is_empty() {
        return Err(stats_err(source, format!("`{key}.mean` is empty")));
    }
    for (name, len) in [
        ("std", Some(std.len())),
        ("q01", q01.as_ref().map(Vec::len)),
        ("q99", q99.as_ref().map(Vec::len)),
    ] {
        if let Some(len) = len {
            if len != mean.len() {
                return Err(stats_err(
                    source,
                    format!(
                        "`{key}.{name}` has {len} values but `{key}.mean` has {}",
                        mean.len()
                    ),
                ));
            }
        }
    }
    Ok(Stats {
        mean,
        std,
        q01,
        q99,
    })
}

impl NormStats {
    /// Parses the contents of a `norm_stats.json`; `source` names it in errors.
    pub fn from_json_str(json: &str, source: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(json)
            .map_err(|e| stats_err(source, format!("not valid JSON: {e}")))?;
        let top = root.get("norm_stats").unwrap_or(&root);
        let obj = top
            .as_object()
            .ok_or_else(|| stats_err(source, "expected a JSON object"))?;
        let get = |key: &str| {
            obj.get(key).ok_or_else(|| {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                stats_err(
                    source,
                    format!("no `{key}` statistics (keys present: {keys:?})"),
                )
            })
        };
        Ok(NormStats {
            state: parse_stats(get("state")?, source, "state")?,
            actions: parse_stats(get("actions")?, source, "actions")?,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }
}

/// Where a checkpoint keeps its stats: `<dir>/norm_stats.json`, else the single
/// `<dir>/assets/<asset_id>/norm_stats.json` (openpi's layout). `None` if there is none or
/// several (then the path must be given explicitly).
pub fn find_norm_stats(checkpoint_dir: &Path) -> Option<PathBuf> {
    let direct = checkpoint_dir.join("norm_stats.json");
    if direct.is_file() {
        return Some(direct);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(checkpoint_dir.join("assets"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("norm_stats.json"))
        .filter(|p| p.is_file())
        .collect();
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}

/// Robot state in, model state out; model actions in, robot actions out.
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    stats: Option<NormStats>,
    mode: NormMode,
}

impl Normalizer {
    /// Checks that `mode` has what it needs (quantile mode needs `q01`/`q99` for both keys).
    pub fn new(stats: NormStats, mode: NormMode) -> Result<Self> {
        if mode == NormMode::Quantile {
            for (key, s) in [("state", &stats.state), ("actions", &stats.actions)] {
                if !s.has_quantiles() {
                    return Err(Error::NormStats(format!(
                        "quantile normalization needs `{key}.q01` and `{key}.q99`, which the \
                         stats lack (use z-score normalization)"
                    )));
                }
            }
        }
        Ok(Normalizer {
            stats: Some(stats),
            mode,
        })
    }

    /// Reads `path`: a `norm_stats.json`, or a checkpoint directory (see [`find_norm_stats`]).
    pub fn load(path: &Path, mode: NormMode) -> Result<Self> {
        let file = if path.is_dir() {
            find_norm_stats(path).ok_or_else(|| {
                Error::NormStats(format!(
                    "{}: no norm_stats.json (looked for norm_stats.json and a single \
                     assets/<asset_id>/norm_stats.json)",
                    path.display()
                ))
            })?
        } else {
            path.to_path_buf()
        };
        Self::new(NormStats::load(&file)?, mode)
    }

    /// No statistics: states and actions pass through unchanged (still padded / cut).
    pub fn identity() -> Self {
        Normalizer {
            stats: None,
            mode: NormMode::ZScore,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.stats.is_none()
    }

    pub fn mode(&self) -> NormMode {
        self.mode
    }

    pub fn stats(&self) -> Option<&NormStats> {
        self.stats.as_ref()
    }

    /// Robot state (any length ≤ `action_dim`, f32 or f64) → normalized state zero-padded to
    /// `action_dim`, as openpi's `Normalize` then `PadStatesAndActions`.
    pub fn normalize_state<T: Copy + Into<f64>>(
        &self,
        state: &[T],
        action_dim: usize,
    ) -> Result<Vec<f32>> {
        if state.len() > action_dim {
            return Err(Error::State(format!(
                "state has {} values, more than the model's action_dim {action_dim}",
                state.len()
            )));
        }
        if let Some(i) = state.iter().position(|&x| !x.into().is_finite()) {
            return Err(Error::State(format!(
                "state[{i}] is {} (state must be finite)",
                state[i].into()
            )));
        }
        let mut out = vec![0f32; action_dim];
        let Some(stats) = &self.stats else {
            for (o, &x) in out.iter_mut().zip(state) {
                *o = x.into() as f32;
            }
            return Ok(out);
        };
        let s = &stats.state;
        if state.len() > s.len() {
            return Err(Error::NormStats(format!(
                "state has {} values but the `state` statistics only {}",
                state.len(),
                s.len()
            )));
        }
        for (i, (o, &x)) in out.iter_mut().zip(state).enumerate() {
            let x: f64 = x.into();
            let y = match self.mode {
                NormMode::ZScore => (x - s.mean[i]) / (s.std[i] + EPS),
                NormMode::Quantile => {
                    let (q01, q99) = quantiles(s, i);
                    (x - q01) / (q99 - q01 + EPS) * 2.0 - 1.0
                }
            };
            *o = y as f32;
        }
        Ok(out)
    }

    /// Model actions (`chunk × action_dim`, row-major) → robot actions (`chunk × robot_dim`):
    /// openpi's `Unnormalize` on the first `robot_dim` columns, the rest dropped.
    pub fn unnormalize_actions(
        &self,
        actions: &[f32],
        action_dim: usize,
        robot_dim: usize,
    ) -> Result<Vec<f32>> {
        if action_dim == 0 || actions.is_empty() || actions.len() % action_dim != 0 {
            return Err(Error::Input(format!(
                "action chunk has {} values, not a positive multiple of action_dim {action_dim}",
                actions.len()
            )));
        }
        if robot_dim == 0 || robot_dim > action_dim {
            return Err(Error::Input(format!(
                "robot action dimension {robot_dim} must be in 1..={action_dim} (the model's \
                 action_dim)"
            )));
        }
        if let Some(i) = actions.iter().position(|x| !x.is_finite()) {
            return Err(Error::Input(format!(
                "model action [{}, {}] is {}",
                i / action_dim,
                i % action_dim,
                actions[i]
            )));
        }
        if let Some(stats) = &self.stats {
            if robot_dim > stats.actions.len() {
                return Err(Error::NormStats(format!(
                    "robot action dimension {robot_dim} exceeds the {} values of the `actions` \
                     statistics",
                    stats.actions.len()
                )));
            }
        }
        let chunk = actions.len() / action_dim;
        let mut out = Vec::with_capacity(chunk * robot_dim);
        for row in actions.chunks_exact(action_dim) {
            for (j, &x) in row[..robot_dim].iter().enumerate() {
                let x = x as f64;
                let y = match &self.stats {
                    None => x,
                    Some(st) => {
                        let a = &st.actions;
                        match self.mode {
                            NormMode::ZScore => x * (a.std[j] + EPS) + a.mean[j],
                            NormMode::Quantile => {
                                let (q01, q99) = quantiles(a, j);
                                (x + 1.0) / 2.0 * (q99 - q01 + EPS) + q01
                            }
                        }
                    }
                };
                out.push(y as f32);
            }
        }
        Ok(out)
    }
}

fn quantiles(s: &Stats, i: usize) -> (f64, f64) {
    // `Normalizer::new` checked that quantile mode has both.
    let q01 = s
        .q01
        .as_ref()
        .expect("quantile stats checked at construction");
    let q99 = s
        .q99
        .as_ref()
        .expect("quantile stats checked at construction");
    (q01[i], q99[i])
}
