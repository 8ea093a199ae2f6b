//! Split requests and the SM arithmetic behind them (no GPU needed: unit-tested in CI).
//!
//! A request names two percentages in 1..=100. A backend turns them into SM counts:
//! * green contexts: groups of `granularity` SMs (8 on Hopper, read off the device). The decoder
//!   takes groups from the bottom, the encoder from the top; the SMs that do not fill a whole
//!   group (4 on a 132-SM H100) go to the larger stage. Sums over 100 overlap in the middle.
//! * MPS execution affinity: exact SM counts (a cap, not a placement).
//! * 100 % for a stage means "the whole GPU, no partition" on every backend.

use std::fmt;

use crate::error::{Error, Result};

/// Which mechanism confines each stage's stream to its SMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Backend {
    /// Green contexts (in-process SM partitions, no daemon). The default.
    #[default]
    Green,
    /// MPS execution-affinity contexts (exact SM counts; needs `nvidia-cuda-mps-control -d`).
    Mps,
    /// No partition: both stages on the whole GPU (two ordinary streams).
    None,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Green => "green",
            Backend::Mps => "mps",
            Backend::None => "none",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "green" | "green_ctx" | "green-context" | "greenctx" => Ok(Backend::Green),
            "mps" => Ok(Backend::Mps),
            "none" | "off" | "whole" => Ok(Backend::None),
            other => Err(Error::Parameter {
                name: "partition".into(),
                reason: format!("unknown backend `{other}` (use green, mps or none)"),
            }),
        }
    }
}

/// The requested share of the GPU's SMs for each stage, in percent (1..=100 each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SplitRequest {
    pub encoder_pct: u8,
    pub decoder_pct: u8,
}

impl SplitRequest {
    /// Validates both percentages; out of range is an error naming the parameter.
    pub fn new(encoder_pct: u32, decoder_pct: u32) -> Result<Self> {
        for (name, v) in [("encoder_pct", encoder_pct), ("decoder_pct", decoder_pct)] {
            if !(1..=100).contains(&v) {
                return Err(Error::Parameter {
                    name: name.into(),
                    reason: format!("{v} is outside 1..=100 (percent of the GPU's SMs)"),
                });
            }
        }
        Ok(SplitRequest {
            encoder_pct: encoder_pct as u8,
            decoder_pct: decoder_pct as u8,
        })
    }
    /// 100/100: each stage on the whole GPU.
    pub fn whole() -> Self {
        SplitRequest {
            encoder_pct: 100,
            decoder_pct: 100,
        }
    }
    /// Re-checks the invariant (fields are public, so a struct literal can break it).
    pub fn validate(&self) -> Result<()> {
        SplitRequest::new(self.encoder_pct as u32, self.decoder_pct as u32).map(|_| ())
    }
    /// Both stages on the whole GPU: no partition at all.
    pub fn is_whole(&self) -> bool {
        self.encoder_pct == 100 && self.decoder_pct == 100
    }
    /// Sums over 100 mean the two partitions share SMs.
    pub fn overlaps(&self) -> bool {
        self.encoder_pct as u32 + self.decoder_pct as u32 > 100
    }
}

impl fmt::Display for SplitRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.encoder_pct, self.decoder_pct)
    }
}

/// What the device offers: SM count and the partition granularity of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmLayout {
    /// SMs on the device (132 on an H100 SXM).
    pub total: u32,
    /// Smallest partition and step (green contexts: `minSmPartitionSize`, 8 on Hopper; MPS: 1).
    pub granularity: u32,
    /// Whole groups of `granularity` SMs the driver can make (the H100 gives 15 groups of 8
    /// plus 12 left-over SMs, not 16: groups stay inside a GPC).
    pub groups: u32,
}

impl SmLayout {
    /// Every SM in groups of `granularity` (MPS: granularity 1).
    pub fn uniform(total: u32, granularity: u32) -> Self {
        SmLayout {
            total,
            granularity,
            groups: total / granularity.max(1),
        }
    }
    pub fn groups(&self) -> u32 {
        self.groups
    }
    /// SMs outside the whole groups.
    pub fn remainder(&self) -> u32 {
        self.total - self.groups * self.granularity
    }
}

/// How one stage is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StagePlan {
    /// The whole GPU (an ordinary stream of the primary context).
    Whole,
    /// Green context: groups `[first, first + count)` of `granularity` SMs, plus the
    /// left-over SMs of the device when `with_remainder`.
    Groups {
        first: u32,
        count: u32,
        with_remainder: bool,
    },
    /// MPS execution affinity capped at this many SMs.
    Count(u32),
}

impl StagePlan {
    /// SMs this plan gives the stage on `layout`.
    pub fn sms(&self, layout: &SmLayout) -> u32 {
        match *self {
            StagePlan::Whole => layout.total,
            StagePlan::Groups {
                count,
                with_remainder,
                ..
            } => {
                count * layout.granularity
                    + if with_remainder {
                        layout.remainder()
                    } else {
                        0
                    }
            }
            StagePlan::Count(n) => n,
        }
    }
}

/// A request resolved against a device: what each stage will get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SplitPlan {
    pub backend: Backend,
    pub request: SplitRequest,
    pub encoder: StagePlan,
    pub decoder: StagePlan,
}

impl SplitPlan {
    pub fn encoder_sms(&self, layout: &SmLayout) -> u32 {
        self.encoder.sms(layout)
    }
    pub fn decoder_sms(&self, layout: &SmLayout) -> u32 {
        self.decoder.sms(layout)
    }
    /// SMs both stages may use (0 for disjoint partitions).
    pub fn shared_sms(&self, layout: &SmLayout) -> u32 {
        match (self.encoder, self.decoder) {
            (StagePlan::Whole, d) => d.sms(layout),
            (e, StagePlan::Whole) => e.sms(layout),
            (
                StagePlan::Groups {
                    first: ef,
                    count: ec,
                    with_remainder: er,
                },
                StagePlan::Groups {
                    first: df,
                    count: dc,
                    with_remainder: dr,
                },
            ) => {
                let lo = ef.max(df);
                let hi = (ef + ec).min(df + dc);
                hi.saturating_sub(lo) * layout.granularity
                    + if er && dr { layout.remainder() } else { 0 }
            }
            // MPS caps do not place SMs: any overlap beyond the total is shared.
            (e, d) => (e.sms(layout) + d.sms(layout)).saturating_sub(layout.total),
        }
    }
    /// The key under which a prepared partition (contexts, streams, graphs) is cached.
    pub fn key(&self) -> PlanKey {
        PlanKey {
            backend: self.backend,
            encoder: self.encoder,
            decoder: self.decoder,
        }
    }
}

/// Two requests that round to the same SMs share one prepared partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub backend: Backend,
    pub encoder: StagePlan,
    pub decoder: StagePlan,
}

fn target_sms(pct: u8, total: u32) -> f64 {
    pct as f64 * total as f64 / 100.0
}

/// Resolves `req` for `backend` on `layout`. Never fails for a valid request: counts are
/// rounded to the nearest size the backend can make (reported, never silently different).
pub fn plan(backend: Backend, req: SplitRequest, layout: SmLayout) -> Result<SplitPlan> {
    req.validate()?;
    if layout.total == 0
        || layout.granularity == 0
        || layout.groups == 0
        || layout.groups * layout.granularity > layout.total
    {
        return Err(Error::Gpu(format!(
            "bad SM layout: {} SMs, granularity {}",
            layout.total, layout.granularity
        )));
    }
    let whole = |pct: u8| pct == 100;
    let (encoder, decoder) = match backend {
        Backend::None => (StagePlan::Whole, StagePlan::Whole),
        Backend::Mps => {
            let count = |pct: u8| {
                if whole(pct) {
                    StagePlan::Whole
                } else {
                    let n = target_sms(pct, layout.total).round() as u32;
                    StagePlan::Count(n.clamp(1, layout.total))
                }
            };
            (count(req.encoder_pct), count(req.decoder_pct))
        }
        Backend::Green => plan_green(req, layout),
    };
    Ok(SplitPlan {
        backend,
        request: req,
        encoder,
        decoder,
    })
}

fn plan_green(req: SplitRequest, layout: SmLayout) -> (StagePlan, StagePlan) {
    let n = layout.groups();
    let g = layout.granularity as f64;
    let rem = layout.remainder() as f64;
    let e_whole = req.encoder_pct == 100;
    let d_whole = req.decoder_pct == 100;
    let round_groups = |t: f64| (t / g).round().clamp(1.0, n as f64) as u32;
    // Both partial: the larger stage sits at the top groups with the remainder SMs, the
    // smaller at the bottom. (Tie: the encoder is "larger".)
    let enc_top = req.encoder_pct >= req.decoder_pct;
    let (big_pct, small_pct) = if enc_top {
        (req.encoder_pct, req.decoder_pct)
    } else {
        (req.decoder_pct, req.encoder_pct)
    };
    let place =
        |small: StagePlan, big: StagePlan| if enc_top { (big, small) } else { (small, big) };
    match (e_whole, d_whole) {
        (true, true) => (StagePlan::Whole, StagePlan::Whole),
        (true, false) => (
            StagePlan::Whole,
            StagePlan::Groups {
                first: 0,
                count: round_groups(target_sms(req.decoder_pct, layout.total)),
                with_remainder: false,
            },
        ),
        (false, true) => (
            StagePlan::Groups {
                first: 0,
                count: round_groups(target_sms(req.encoder_pct, layout.total)),
                with_remainder: false,
            },
            StagePlan::Whole,
        ),
        (false, false) => {
            let small_groups = round_groups(target_sms(small_pct, layout.total));
            let sum = req.encoder_pct as u32 + req.decoder_pct as u32;
            let big_groups = if sum == 100 {
                // Complementary: the larger stage takes every SM the smaller one does not.
                n.saturating_sub(small_groups).max(1)
            } else {
                let t = target_sms(big_pct, layout.total) - rem;
                let b = round_groups(t.max(g));
                if sum < 100 {
                    // Disjoint was asked for: rounding must not create an overlap.
                    b.min(n.saturating_sub(small_groups).max(1))
                } else {
                    b
                }
            };
            let small = StagePlan::Groups {
                first: 0,
                count: small_groups,
                with_remainder: false,
            };
            let big = StagePlan::Groups {
                first: n - big_groups,
                count: big_groups,
                with_remainder: true,
            };
            place(small, big)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the H100 driver gives: 15 groups of 8 + 12 left over.
    const H100: SmLayout = SmLayout {
        total: 132,
        granularity: 8,
        groups: 15,
    };
    /// The ideal layout (16 groups of 8 + 4).
    const IDEAL: SmLayout = SmLayout {
        total: 132,
        granularity: 8,
        groups: 16,
    };

    fn sms(b: Backend, e: u32, d: u32) -> (u32, u32, u32) {
        sms_on(H100, b, e, d)
    }
    fn sms_on(l: SmLayout, b: Backend, e: u32, d: u32) -> (u32, u32, u32) {
        let p = plan(b, SplitRequest::new(e, d).unwrap(), l).unwrap();
        (p.encoder_sms(&l), p.decoder_sms(&l), p.shared_sms(&l))
    }

    #[test]
    fn percent_range_is_enforced() {
        assert!(SplitRequest::new(0, 50).is_err());
        assert!(SplitRequest::new(50, 101).is_err());
        assert!(SplitRequest::new(1, 100).is_ok());
        let err = SplitRequest::new(101, 50).unwrap_err().to_string();
        assert!(err.contains("encoder_pct"), "{err}");
        let bad = SplitRequest {
            encoder_pct: 0,
            decoder_pct: 50,
        };
        assert!(plan(Backend::Green, bad, H100).is_err());
    }

    #[test]
    fn green_complementary_splits_use_every_sm() {
        // 70-30: decoder rounded to 40 (5 groups), encoder the other 11 groups + 4 = 92.
        assert_eq!(sms(Backend::Green, 70, 30), (92, 40, 0));
        assert_eq!(sms(Backend::Green, 30, 70), (40, 92, 0));
        // 50-50: 66 -> decoder 64 (8 groups) at the bottom... the encoder (tie) is on top: 68.
        assert_eq!(sms(Backend::Green, 50, 50), (68, 64, 0));
        assert_eq!(sms_on(IDEAL, Backend::Green, 70, 30), (92, 40, 0));
        assert_eq!(sms_on(IDEAL, Backend::Green, 50, 50), (68, 64, 0));
        for l in [H100, IDEAL] {
            for e in 1..100u32 {
                let (es, ds, sh) = sms_on(l, Backend::Green, e, 100 - e);
                assert_eq!(sh, 0, "{e}");
                assert_eq!(es + ds, 132, "{e}: {es}+{ds}");
                assert!(es >= 8 && ds >= 8);
                assert_eq!(es.min(ds) % 8, 0);
            }
        }
    }

    #[test]
    fn green_counts_are_multiples_of_granularity_and_near_the_request() {
        for l in [H100, IDEAL] {
            for e in 1..=99u32 {
                for d in 1..=99u32 {
                    let p = plan(Backend::Green, SplitRequest::new(e, d).unwrap(), l).unwrap();
                    for (pct, st) in [(e, p.encoder), (d, p.decoder)] {
                        let StagePlan::Groups {
                            first,
                            count,
                            with_remainder,
                        } = st
                        else {
                            panic!("{e}-{d}: {st:?}");
                        };
                        assert!(count >= 1 && first + count <= l.groups, "{e}-{d}: {st:?}");
                        let got = st.sms(&l) as f64;
                        let want = pct as f64 * 1.32;
                        // Within one group + the left-over SMs of the request, or at the floor.
                        let floor =
                            (l.granularity + if with_remainder { l.remainder() } else { 0 }) as f64;
                        assert!(
                            (got - want).abs() <= (8 + l.remainder()) as f64 || got == floor,
                            "{e}-{d}: stage {pct}% got {got} SMs ({st:?}, rem {with_remainder})"
                        );
                    }
                    if e + d <= 100 {
                        assert_eq!(p.shared_sms(&l), 0, "{e}-{d} must be disjoint");
                    }
                }
            }
        }
    }

    #[test]
    fn green_overlap_when_sum_exceeds_100() {
        let (es, ds, sh) = sms(Backend::Green, 70, 70);
        assert_eq!((es, ds), (92, 96));
        assert_eq!(sh, es + ds - 132);
        let (_, _, sh) = sms(Backend::Green, 60, 40);
        assert_eq!(sh, 0);
    }

    #[test]
    fn whole_means_no_partition() {
        let p = plan(Backend::Green, SplitRequest::whole(), H100).unwrap();
        assert_eq!((p.encoder, p.decoder), (StagePlan::Whole, StagePlan::Whole));
        let p = plan(Backend::Green, SplitRequest::new(100, 30).unwrap(), H100).unwrap();
        assert_eq!(p.encoder, StagePlan::Whole);
        assert_eq!(p.decoder_sms(&H100), 40);
        let p = plan(Backend::None, SplitRequest::new(30, 30).unwrap(), H100).unwrap();
        assert_eq!(p.encoder_sms(&H100) + p.decoder_sms(&H100), 264);
    }

    #[test]
    fn mps_counts_are_exact() {
        let mps = SmLayout::uniform(132, 1);
        let p = plan(Backend::Mps, SplitRequest::new(70, 30).unwrap(), mps).unwrap();
        assert_eq!(p.encoder, StagePlan::Count(92));
        assert_eq!(p.decoder, StagePlan::Count(40));
        let p = plan(Backend::Mps, SplitRequest::new(1, 50).unwrap(), mps).unwrap();
        assert_eq!(p.encoder, StagePlan::Count(1));
        assert_eq!(p.decoder, StagePlan::Count(66));
        let p = plan(Backend::Mps, SplitRequest::new(80, 40).unwrap(), mps).unwrap();
        assert_eq!(p.shared_sms(&mps), 106 + 53 - 132);
    }

    #[test]
    fn equal_rounding_shares_a_key() {
        let a = plan(Backend::Green, SplitRequest::new(70, 30).unwrap(), H100).unwrap();
        let b = plan(Backend::Green, SplitRequest::new(71, 29).unwrap(), H100).unwrap();
        assert_eq!(a.key(), b.key());
        let c = plan(Backend::Mps, SplitRequest::new(70, 30).unwrap(), H100).unwrap();
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn backend_parses() {
        assert_eq!("Green".parse::<Backend>().unwrap(), Backend::Green);
        assert_eq!("mps".parse::<Backend>().unwrap(), Backend::Mps);
        assert_eq!("none".parse::<Backend>().unwrap(), Backend::None);
        assert!("cuda".parse::<Backend>().is_err());
    }
}
