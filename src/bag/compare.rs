//! Comparing two action bags (`trajectory_msgs/JointTrajectory` chunks): chunk i of one against
//! chunk i of the other, element by element, with a tolerance `atol + rtol·|expected|`.
//! Counts, shapes, joint names and observation stamps must match exactly; NaN never passes.

use std::fmt::Write as _;
use std::path::Path;

use super::msgs::{JointTrajectory, JOINT_TRAJECTORY};
use super::reader::Bag;
use crate::error::{Error, Result};

/// One action chunk of a bag.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionChunk {
    /// Bag receive time (ns).
    pub timestamp: i64,
    pub msg: JointTrajectory,
}

/// Reads the action chunks of `topic`, or of the bag's only JointTrajectory topic when
/// `topic` is `None`. Returns the topic name and the chunks in timestamp order.
pub fn read_action_chunks(bag: &Bag, topic: Option<&str>) -> Result<(String, Vec<ActionChunk>)> {
    let name = match topic {
        Some(t) => {
            let info = bag.topic_index(t).map(|i| &bag.topics[i]).ok_or_else(|| {
                Error::Bag(format!(
                    "{}: no topic `{t}` (topics: {})",
                    bag.path.display(),
                    topic_list(bag)
                ))
            })?;
            if info.type_name != JOINT_TRAJECTORY {
                return Err(Error::Bag(format!(
                    "{}: topic `{t}` has type {}, expected {JOINT_TRAJECTORY}",
                    bag.path.display(),
                    info.type_name
                )));
            }
            t.to_string()
        }
        None => {
            let cands: Vec<&str> = bag
                .topics
                .iter()
                .filter(|t| t.type_name == JOINT_TRAJECTORY)
                .map(|t| t.name.as_str())
                .collect();
            match cands.as_slice() {
                [one] => one.to_string(),
                [] => {
                    return Err(Error::Bag(format!(
                        "{}: no {JOINT_TRAJECTORY} topic (topics: {})",
                        bag.path.display(),
                        topic_list(bag)
                    )))
                }
                many => {
                    return Err(Error::Bag(format!(
                        "{}: several {JOINT_TRAJECTORY} topics ({}); choose one with --topic",
                        bag.path.display(),
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let mut chunks = Vec::new();
    bag.for_each(Some(&[name.as_str()]), |m| {
        let msg = JointTrajectory::decode(&m.data).map_err(|e| {
            Error::Bag(format!(
                "{}: action chunk {} on `{name}`: {}",
                bag.path.display(),
                chunks.len(),
                strip(&e)
            ))
        })?;
        chunks.push(ActionChunk {
            timestamp: m.timestamp,
            msg,
        });
        Ok(())
    })?;
    Ok((name, chunks))
}

fn strip(e: &Error) -> String {
    match e {
        Error::Bag(s) => s.clone(),
        other => other.to_string(),
    }
}

fn topic_list(bag: &Bag) -> String {
    if bag.topics.is_empty() {
        return "none".into();
    }
    bag.topics
        .iter()
        .map(|t| format!("{} [{}]", t.name, t.type_name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Comparison settings.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Action topic in the actual bag (`None`: its only JointTrajectory topic).
    pub topic: Option<String>,
    /// Action topic in the expected bag (`None`: its only JointTrajectory topic).
    pub expected_topic: Option<String>,
    /// Absolute tolerance per element.
    pub atol: f64,
    /// Relative tolerance per element (times |expected|).
    pub rtol: f64,
    /// Require equal `header.stamp` (observation time) per chunk.
    pub check_stamps: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            topic: None,
            expected_topic: None,
            atol: 1e-5,
            rtol: 1e-4,
            check_stamps: true,
        }
    }
}

/// Per-chunk result.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkDiff {
    pub index: usize,
    /// Observation stamp (ns) of the expected chunk.
    pub stamp_ns: i64,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// Where the largest error is: (point, joint).
    pub worst: (usize, usize),
    /// Why this chunk fails, if it does.
    pub failure: Option<String>,
}

/// The outcome of [`compare_bags`].
#[derive(Clone, Debug, Default)]
pub struct CompareReport {
    pub actual_chunks: usize,
    pub expected_chunks: usize,
    pub chunks: Vec<ChunkDiff>,
    /// Whole-bag problems (count mismatch).
    pub problems: Vec<String>,
    pub max_abs: f64,
    pub mean_abs: f64,
}

impl CompareReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.chunks.iter().all(|c| c.failure.is_none())
    }

    pub fn failed_chunks(&self) -> impl Iterator<Item = &ChunkDiff> {
        self.chunks.iter().filter(|c| c.failure.is_some())
    }

    /// Human-readable summary: counts, max and mean error, then every failure.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chunks: {} actual, {} expected, {} compared; max abs error {:.3e}, mean abs error {:.3e}",
            self.actual_chunks,
            self.expected_chunks,
            self.chunks.len(),
            self.max_abs,
            self.mean_abs
        );
        for p in &self.problems {
            let _ = writeln!(s, "FAIL: {p}");
        }
        for c in self.failed_chunks() {
            let _ = writeln!(
                s,
                "FAIL: chunk {} (stamp {}.{:09} s): {}",
                c.index,
                c.stamp_ns.div_euclid(1_000_000_000),
                c.stamp_ns.rem_euclid(1_000_000_000),
                c.failure.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(s, "{}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}

/// Compares chunk by chunk. `Err` only when a bag cannot be read; mismatches are in the report.
pub fn compare_bags(
    actual: impl AsRef<Path>,
    expected: impl AsRef<Path>,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    let a = Bag::open(actual)?;
    let e = Bag::open(expected)?;
    let (_, ac) = read_action_chunks(&a, opts.topic.as_deref())?;
    let (_, ec) = read_action_chunks(&e, opts.expected_topic.as_deref())?;
    Ok(compare_chunks(&ac, &ec, opts))
}

/// Compares chunk lists (see [`compare_bags`]).
pub fn compare_chunks(
    actual: &[ActionChunk],
    expected: &[ActionChunk],
    opts: &CompareOptions,
) -> CompareReport {
    let mut r = CompareReport {
        actual_chunks: actual.len(),
        expected_chunks: expected.len(),
        ..Default::default()
    };
    if actual.len() != expected.len() {
        r.problems.push(format!(
            "chunk count differs: {} actual vs {} expected",
            actual.len(),
            expected.len()
        ));
    }
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let d = diff_chunk(i, &a.msg, &e.msg, opts);
        if d.max_abs != f64::INFINITY {
            let cnt: usize = e.msg.points.iter().map(|p| p.positions.len()).sum();
            sum += d.mean_abs * cnt as f64;
            n += cnt;
        }
        r.max_abs = if d.max_abs.is_nan() {
            f64::NAN
        } else {
            r.max_abs.max(d.max_abs)
        };
        r.chunks.push(d);
    }
    r.mean_abs = if n > 0 { sum / n as f64 } else { 0.0 };
    r
}

fn diff_chunk(
    index: usize,
    a: &JointTrajectory,
    e: &JointTrajectory,
    opts: &CompareOptions,
) -> ChunkDiff {
    let mut d = ChunkDiff {
        index,
        stamp_ns: e.header.stamp.to_nanos(),
        max_abs: 0.0,
        mean_abs: 0.0,
        worst: (0, 0),
        failure: None,
    };
    let fail = |d: &mut ChunkDiff, why: String| {
        if d.failure.is_none() {
            d.failure = Some(why);
        }
    };
    if opts.check_stamps && a.header.stamp != e.header.stamp {
        fail(
            &mut d,
            format!(
                "observation stamp {} ns differs from expected {} ns",
                a.header.stamp.to_nanos(),
                e.header.stamp.to_nanos()
            ),
        );
    }
    if a.joint_names != e.joint_names {
        fail(
            &mut d,
            format!(
                "joint names {:?} differ from expected {:?}",
                a.joint_names, e.joint_names
            ),
        );
    }
    if a.points.len() != e.points.len() {
        fail(
            &mut d,
            format!("{} points, expected {}", a.points.len(), e.points.len()),
        );
        d.max_abs = f64::INFINITY;
        return d;
    }
    let (mut sum, mut cnt) = (0.0f64, 0usize);
    let mut worst_excess: Option<(f64, usize, usize, f64, f64)> = None;
    for (p, (pa, pe)) in a.points.iter().zip(&e.points).enumerate() {
        if pa.positions.len() != pe.positions.len() {
            fail(
                &mut d,
                format!(
                    "point {p} has {} positions, expected {}",
                    pa.positions.len(),
                    pe.positions.len()
                ),
            );
            d.max_abs = f64::INFINITY;
            return d;
        }
        if pa.time_from_start != pe.time_from_start {
            fail(
                &mut d,
                format!(
                    "point {p} time_from_start {} ns, expected {} ns",
                    pa.time_from_start.to_nanos(),
                    pe.time_from_start.to_nanos()
                ),
            );
        }
        for (j, (&x, &y)) in pa.positions.iter().zip(&pe.positions).enumerate() {
            let err = (x - y).abs();
            // NaN anywhere (either side) fails and poisons the maximum.
            let err = if err.is_nan() { f64::NAN } else { err };
            if !d.max_abs.is_nan() && (err.is_nan() || err > d.max_abs) {
                d.max_abs = err;
                d.worst = (p, j);
            }
            if err.is_finite() {
                sum += err;
                cnt += 1;
            }
            let tol = opts.atol + opts.rtol * y.abs();
            let excess = if err.is_nan() {
                f64::INFINITY
            } else {
                err - tol
            };
            let within = err <= tol;
            if !within && worst_excess.is_none_or(|w| excess > w.0) {
                worst_excess = Some((excess, p, j, x, y));
            }
        }
    }
    d.mean_abs = if cnt > 0 { sum / cnt as f64 } else { 0.0 };
    if let Some((_, p, j, x, y)) = worst_excess {
        fail(
            &mut d,
            format!(
                "max error {:.3e} at point {p} joint {j} ({}): actual {x}, expected {y}; tolerance \
                 {:.1e} + {:.1e}·|expected|",
                (x - y).abs(),
                e.joint_names.get(j).map_or("?", String::as_str),
                opts.atol,
                opts.rtol
            ),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::msgs::{Header, JointTrajectoryPoint, Time};
    use super::*;

    fn chunk(stamp: i64, vals: &[[f64; 2]]) -> ActionChunk {
        ActionChunk {
            timestamp: stamp,
            msg: JointTrajectory {
                header: Header {
                    stamp: Time::from_nanos(stamp),
                    frame_id: String::new(),
                },
                joint_names: vec!["a".into(), "b".into()],
                points: vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| JointTrajectoryPoint {
                        positions: v.to_vec(),
                        time_from_start: Time::from_nanos(i as i64 * 20_000_000),
                        ..Default::default()
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn equal_passes_and_perturbed_fails_naming_the_chunk() {
        let e = vec![
            chunk(10, &[[1.0, 2.0], [3.0, 4.0]]),
            chunk(20, &[[0.0, 0.0]; 2]),
        ];
        let o = CompareOptions::default();
        let r = compare_chunks(&e, &e, &o);
        assert!(r.passed(), "{}", r.summary());
        assert_eq!(r.max_abs, 0.0);
        let mut a = e.clone();
        a[1].msg.points[1].positions[0] = 0.01;
        let r = compare_chunks(&a, &e, &o);
        assert!(!r.passed());
        let s = r.summary();
        assert!(s.contains("FAIL: chunk 1"), "{s}");
        assert!(s.contains("point 1 joint 0 (a)"), "{s}");
        assert_eq!(r.failed_chunks().count(), 1);
        assert!((r.max_abs - 0.01).abs() < 1e-12);
    }

    #[test]
    fn nan_never_passes() {
        let e = vec![chunk(10, &[[1.0, 2.0]])];
        let mut a = e.clone();
        a[0].msg.points[0].positions[1] = f64::NAN;
        let o = CompareOptions {
            atol: 1e9,
            ..Default::default()
        };
        let r = compare_chunks(&a, &e, &o);
        assert!(!r.passed(), "{}", r.summary());
        assert!(r.max_abs.is_nan());
        // NaN on both sides still fails.
        let r = compare_chunks(&a, &a, &o);
        assert!(!r.passed());
    }

    #[test]
    fn count_stamp_and_shape_mismatches_fail() {
        let e = vec![chunk(10, &[[1.0, 2.0]]), chunk(20, &[[1.0, 2.0]])];
        let r = compare_chunks(&e[..1], &e, &CompareOptions::default());
        assert!(!r.passed());
        assert!(r
            .summary()
            .contains("chunk count differs: 1 actual vs 2 expected"));
        let mut a = e.clone();
        a[0].msg.header.stamp = Time::from_nanos(11);
        let r = compare_chunks(&a, &e, &CompareOptions::default());
        assert!(
            r.summary().contains("observation stamp 11 ns differs"),
            "{}",
            r.summary()
        );
        let r = compare_chunks(
            &a,
            &e,
            &CompareOptions {
                check_stamps: false,
                ..Default::default()
            },
        );
        assert!(r.passed());
        let mut a = e.clone();
        let p0 = a[1].msg.points[0].clone();
        a[1].msg.points.push(p0);
        let r = compare_chunks(&a, &e, &CompareOptions::default());
        assert!(r.summary().contains("chunk 1") && r.summary().contains("2 points, expected 1"));
    }
}
