//! Approximate time synchronisation: camera frames and joint states, each with its message
//! stamp, are assembled into observations.
//!
//! Rules (the node and the bag replay tool both follow them, so a replay reproduces a run):
//! - Time is nanoseconds, as in the messages' `header.stamp`; `now` is given by the caller
//!   (the node's clock, or the bag's time of the message just read).
//! - Frames and joint states older than `max_age` (`now - stamp > max_age`) are dropped;
//!   `max_age = 0` disables the check.
//! - The *pacer* is the first camera (in `camera_topics` order) that has a fresh frame; in
//!   `wait` mode it is always camera 0. Its newest frame, if not used yet, anchors the next
//!   observation; the observation's stamp is the anchor's stamp.
//! - Every other camera contributes its frame closest to the anchor, if within `slop`. While
//!   a camera's newest frame is older than the anchor and `now` is less than `slop` past the
//!   anchor's stamp (or its reception, if later), a closer frame may still come, so the
//!   observation waits (grace period).
//! - A camera with no frame within `slop`: `mask` → its view is masked (`None`);
//!   `wait` → the observation is held until the frame comes or the anchor is too old.
//! - The joint state is the one closest in time to the anchor (among fresh ones); with none,
//!   the observation waits. [`ObservationSync::poll_images`] skips the joint state (the
//!   encoder stage of concurrent mode, which takes the newest joint state at decode time).

use std::collections::VecDeque;
use std::sync::Arc;

use super::settings::{MissingPolicy, NodeSettings};

/// Nanoseconds (ROS time or bag time).
pub type Stamp = i64;

/// Converts seconds to [`Stamp`] units.
pub fn secs_to_stamp(s: f64) -> Stamp {
    (s * 1e9).round() as Stamp
}

/// One camera frame; the payload is shared, so observations copy no pixels.
#[derive(Debug)]
pub struct Frame<I> {
    pub stamp: Stamp,
    /// When it reached the sync (same clock as `now`; = `stamp` via [`ObservationSync::push_frame`]).
    pub received: Stamp,
    pub image: Arc<I>,
}

impl<I> Clone for Frame<I> {
    fn clone(&self) -> Self {
        Frame {
            stamp: self.stamp,
            received: self.received,
            image: Arc::clone(&self.image),
        }
    }
}

/// A joint state reduced to the state vector (positions in `state_joints` order).
#[derive(Clone, Debug, PartialEq)]
pub struct JointSample {
    pub stamp: Stamp,
    pub positions: Vec<f64>,
}

/// An assembled observation.
#[derive(Debug)]
pub struct Observation<I> {
    /// Stamp of the anchor frame.
    pub stamp: Stamp,
    /// One entry per camera (in `camera_topics` order; the runner maps them to view slots):
    /// `None` = masked.
    pub images: Vec<Option<Frame<I>>>,
    /// `None` only from [`ObservationSync::poll_images`].
    pub joints: Option<JointSample>,
}

/// Sync parameters (from [`NodeSettings`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyncConfig {
    pub cameras: usize,
    pub slop: Stamp,
    /// 0 = no age limit.
    pub max_age: Stamp,
    pub missing: MissingPolicy,
}

impl<I> Clone for Observation<I> {
    fn clone(&self) -> Self {
        Observation {
            stamp: self.stamp,
            images: self.images.clone(),
            joints: self.joints.clone(),
        }
    }
}

impl SyncConfig {
    pub fn from_settings(s: &NodeSettings) -> Self {
        SyncConfig {
            cameras: s.camera_topics.len(),
            slop: secs_to_stamp(s.sync_slop_s),
            max_age: secs_to_stamp(s.max_age_s),
            missing: s.missing_camera,
        }
    }
}

/// Why [`ObservationSync::poll`] returned nothing (for logs and diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// No camera has a fresh frame.
    NoFrames,
    /// The newest pacer frame was already used.
    NoNewFrame,
    /// Grace period: camera `i` may still send a closer frame.
    Grace(usize),
    /// `wait` policy: camera `i` has no frame within the slop.
    WaitingForCamera(usize),
    /// No fresh joint state.
    WaitingForJoints,
}

const FRAMES_KEPT: usize = 8;
const JOINTS_KEPT: usize = 256;

/// Buffers of recent frames and joint states; see the module docs for the rules.
#[derive(Debug)]
pub struct ObservationSync<I> {
    cfg: SyncConfig,
    cameras: Vec<VecDeque<Frame<I>>>,
    joints: VecDeque<JointSample>,
    last_anchor: Option<Stamp>,
    /// Why the last poll returned nothing.
    pub pending: Option<Pending>,
    /// Frames and joint states dropped for age.
    pub dropped_stale: u64,
}

impl<I> ObservationSync<I> {
    pub fn new(cfg: SyncConfig) -> Self {
        ObservationSync {
            cameras: (0..cfg.cameras).map(|_| VecDeque::new()).collect(),
            joints: VecDeque::new(),
            last_anchor: None,
            pending: None,
            dropped_stale: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// Adds a frame from camera `camera` (index into `camera_topics`). Frames may arrive out
    /// of order; they are kept sorted by stamp.
    pub fn push_frame(&mut self, camera: usize, stamp: Stamp, image: Arc<I>) {
        self.push_frame_received(camera, stamp, stamp, image)
    }

    /// Like [`Self::push_frame`], with the time the frame was received (`now` then): the
    /// grace period for the other cameras runs from the later of stamp and reception, so
    /// transport and pre-processing delays do not mask a camera.
    pub fn push_frame_received(
        &mut self,
        camera: usize,
        stamp: Stamp,
        received: Stamp,
        image: Arc<I>,
    ) {
        let Some(q) = self.cameras.get_mut(camera) else {
            return;
        };
        let pos = q.partition_point(|f| f.stamp <= stamp);
        q.insert(
            pos,
            Frame {
                stamp,
                received,
                image,
            },
        );
        while q.len() > FRAMES_KEPT {
            q.pop_front();
        }
    }

    /// Adds a joint state (already checked and reduced to the state vector).
    pub fn push_joints(&mut self, sample: JointSample) {
        let pos = self.joints.partition_point(|j| j.stamp <= sample.stamp);
        self.joints.insert(pos, sample);
        while self.joints.len() > JOINTS_KEPT {
            self.joints.pop_front();
        }
    }

    /// The newest joint state, if fresh (the decoder's input in concurrent mode).
    pub fn latest_joints(&mut self, now: Stamp) -> Option<JointSample> {
        self.prune(now);
        self.joints.back().cloned()
    }

    fn fresh(&self, stamp: Stamp, now: Stamp) -> bool {
        self.cfg.max_age <= 0 || now.saturating_sub(stamp) <= self.cfg.max_age
    }

    fn prune(&mut self, now: Stamp) {
        let max_age = self.cfg.max_age;
        if max_age <= 0 {
            return;
        }
        let keep = |s: Stamp| now.saturating_sub(s) <= max_age;
        let mut dropped = 0;
        for q in &mut self.cameras {
            while q.front().is_some_and(|f| !keep(f.stamp)) {
                q.pop_front();
                dropped += 1;
            }
        }
        while self.joints.front().is_some_and(|j| !keep(j.stamp)) {
            self.joints.pop_front();
            dropped += 1;
        }
        self.dropped_stale += dropped;
    }

    /// The next complete observation (images + joint state), if one is ready at `now`.
    pub fn poll(&mut self, now: Stamp) -> Option<Observation<I>> {
        self.poll_inner(now, true)
    }

    /// Like [`Self::poll`] without the joint state (concurrent mode's encoder stage).
    pub fn poll_images(&mut self, now: Stamp) -> Option<Observation<I>> {
        self.poll_inner(now, false)
    }

    fn poll_inner(&mut self, now: Stamp, need_joints: bool) -> Option<Observation<I>> {
        self.prune(now);
        let r = self.assemble(now, need_joints);
        match r {
            Ok(obs) => {
                self.pending = None;
                self.last_anchor = Some(obs.stamp);
                Some(obs)
            }
            Err(p) => {
                self.pending = Some(p);
                None
            }
        }
    }

    fn assemble(&self, now: Stamp, need_joints: bool) -> Result<Observation<I>, Pending> {
        let pacer = match self.cfg.missing {
            MissingPolicy::Wait => 0,
            MissingPolicy::Mask => self
                .cameras
                .iter()
                .position(|q| !q.is_empty())
                .ok_or(Pending::NoFrames)?,
        };
        let anchor = self.cameras[pacer].back().ok_or(Pending::NoFrames)?;
        debug_assert!(self.fresh(anchor.stamp, now));
        if self.last_anchor.is_some_and(|l| anchor.stamp <= l) {
            return Err(Pending::NoNewFrame);
        }
        let t = anchor.stamp;
        let mut images = Vec::with_capacity(self.cameras.len());
        for (c, q) in self.cameras.iter().enumerate() {
            if c == pacer {
                images.push(Some(anchor.clone()));
                continue;
            }
            let best = q
                .iter()
                .min_by_key(|f| f.stamp.abs_diff(t))
                .filter(|f| f.stamp.abs_diff(t) <= self.cfg.slop as u64);
            let newest_older = q.back().is_none_or(|f| f.stamp < t);
            let exact = best.is_some_and(|f| f.stamp == t);
            let grace_from = t.max(anchor.received);
            if !exact && newest_older && now < grace_from.saturating_add(self.cfg.slop) {
                return Err(Pending::Grace(c));
            }
            match (best, self.cfg.missing) {
                (Some(f), _) => images.push(Some(f.clone())),
                (None, MissingPolicy::Mask) => images.push(None),
                (None, MissingPolicy::Wait) => return Err(Pending::WaitingForCamera(c)),
            }
        }
        let joints = if need_joints {
            let j = self
                .joints
                .iter()
                .min_by_key(|j| j.stamp.abs_diff(t))
                .ok_or(Pending::WaitingForJoints)?;
            Some(j.clone())
        } else {
            None
        };
        Ok(Observation {
            stamp: t,
            images,
            joints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Stamp = 1_000_000;

    fn cfg(cameras: usize, missing: MissingPolicy) -> SyncConfig {
        SyncConfig {
            cameras,
            slop: 20 * MS,
            max_age: 500 * MS,
            missing,
        }
    }

    fn js(stamp: Stamp, x: f64) -> JointSample {
        JointSample {
            stamp,
            positions: vec![x],
        }
    }

    fn ids(o: &Observation<u32>) -> Vec<Option<u32>> {
        o.images
            .iter()
            .map(|f| f.as_ref().map(|f| *f.image))
            .collect()
    }

    #[test]
    fn pairs_closest_frames_and_joint_state() {
        let mut s = ObservationSync::new(cfg(2, MissingPolicy::Mask));
        let t0 = 10_000 * MS;
        s.push_joints(js(t0 - 5 * MS, 1.0));
        s.push_joints(js(t0 + 30 * MS, 2.0));
        s.push_frame(1, t0 - 40 * MS, Arc::new(10));
        s.push_frame(1, t0 + 3 * MS, Arc::new(11));
        s.push_frame(0, t0, Arc::new(1));
        let o = s.poll(t0 + 5 * MS).expect("ready");
        assert_eq!(o.stamp, t0);
        assert_eq!(ids(&o), vec![Some(1), Some(11)]);
        assert_eq!(o.joints.unwrap().positions, vec![1.0]);
        // The same anchor is not used twice.
        assert!(s.poll(t0 + 6 * MS).is_none());
        assert_eq!(s.pending, Some(Pending::NoNewFrame));
    }

    #[test]
    fn mask_policy_masks_a_missing_camera_after_the_grace_period() {
        let mut s = ObservationSync::new(cfg(2, MissingPolicy::Mask));
        let t0 = 1_000 * MS;
        s.push_joints(js(t0, 0.0));
        s.push_frame(0, t0, Arc::new(1));
        assert!(s.poll(t0 + MS).is_none());
        assert_eq!(s.pending, Some(Pending::Grace(1)));
        // The late frame arrives within the grace period: used.
        s.push_frame(1, t0 + 2 * MS, Arc::new(7));
        assert_eq!(ids(&s.poll(t0 + 3 * MS).unwrap()), vec![Some(1), Some(7)]);
        // Next frame: camera 1 silent; after the slop the view is masked.
        s.push_frame(0, t0 + 100 * MS, Arc::new(2));
        assert!(s.poll(t0 + 101 * MS).is_none());
        let o = s.poll(t0 + 121 * MS).unwrap();
        assert_eq!(ids(&o), vec![Some(2), None]);
    }

    #[test]
    fn wait_policy_holds_until_frame_or_age() {
        let mut s = ObservationSync::new(cfg(2, MissingPolicy::Wait));
        let t0 = 1_000 * MS;
        s.push_joints(js(t0, 0.0));
        s.push_frame(0, t0, Arc::new(1));
        assert!(s.poll(t0 + 100 * MS).is_none());
        assert_eq!(s.pending, Some(Pending::WaitingForCamera(1)));
        s.push_frame(1, t0 + 5 * MS, Arc::new(9));
        assert_eq!(ids(&s.poll(t0 + 101 * MS).unwrap()), vec![Some(1), Some(9)]);
        // A held anchor is dropped once too old.
        s.push_frame(0, t0 + 200 * MS, Arc::new(3));
        assert!(s.poll(t0 + 300 * MS).is_none());
        assert!(s.poll(t0 + 800 * MS).is_none());
        assert_eq!(s.pending, Some(Pending::NoFrames));
        assert!(s.dropped_stale >= 3);
    }

    #[test]
    fn pacer_moves_to_the_next_live_camera_in_mask_mode() {
        let mut s = ObservationSync::new(cfg(2, MissingPolicy::Mask));
        let t0 = 1_000 * MS;
        s.push_frame(0, t0, Arc::new(1));
        s.push_frame(1, t0, Arc::new(5));
        s.push_joints(js(t0, 0.0));
        assert!(s.poll(t0).is_some());
        // Camera 0 dies; camera 1 keeps going.
        let t1 = t0 + 600 * MS;
        s.push_frame(1, t1, Arc::new(6));
        s.push_joints(js(t1, 0.0));
        let o = s.poll(t1 + 30 * MS).unwrap();
        assert_eq!(o.stamp, t1);
        assert_eq!(ids(&o), vec![None, Some(6)]);
    }

    #[test]
    fn waits_for_joints_and_drops_stale_ones() {
        let mut s = ObservationSync::new(cfg(1, MissingPolicy::Mask));
        let t0 = 1_000 * MS;
        s.push_joints(js(t0 - 900 * MS, 0.0));
        s.push_frame(0, t0, Arc::new(1));
        assert!(s.poll(t0).is_none());
        assert_eq!(s.pending, Some(Pending::WaitingForJoints));
        assert!(s.poll_images(t0).is_some());
        s.push_joints(js(t0 + MS, 4.0));
        s.push_frame(0, t0 + 10 * MS, Arc::new(2));
        assert_eq!(
            s.poll(t0 + 10 * MS).unwrap().joints.unwrap().positions,
            [4.0]
        );
        assert_eq!(s.latest_joints(t0 + 10 * MS).unwrap().positions, [4.0]);
    }

    #[test]
    fn no_age_limit_when_max_age_is_zero() {
        let mut c = cfg(1, MissingPolicy::Mask);
        c.max_age = 0;
        let mut s = ObservationSync::new(c);
        s.push_frame(0, 5, Arc::new(1));
        s.push_joints(js(5, 0.0));
        assert!(s.poll(1_000_000 * MS).is_some());
    }

    #[test]
    fn grace_runs_from_reception_when_later_than_the_stamp() {
        let mut s = ObservationSync::new(cfg(2, MissingPolicy::Mask));
        let t0 = 1_000 * MS;
        s.push_joints(js(t0, 0.0));
        // Received 300 ms after its stamp (slow transport): camera 1 still gets its grace.
        s.push_frame_received(0, t0, t0 + 300 * MS, Arc::new(1));
        assert!(s.poll(t0 + 310 * MS).is_none());
        assert_eq!(s.pending, Some(Pending::Grace(1)));
        s.push_frame_received(1, t0, t0 + 315 * MS, Arc::new(2));
        assert_eq!(ids(&s.poll(t0 + 316 * MS).unwrap()), vec![Some(1), Some(2)]);
    }
}
