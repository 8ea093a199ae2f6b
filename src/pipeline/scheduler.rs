//! The node's work loop, without ROS: inputs (prepared frames, joint states, live settings)
//! in, action chunks out; inference runs on two worker threads, never on the caller's.
//!
//! - Sequential (`concurrent = false`): when the decoder thread is free, the next observation
//!   ([`ObservationSync::poll`]) is encoded and decoded there, inference index k = 0, 1, ...
//! - Concurrent (`concurrent = true`): the encoder thread encodes the newest camera
//!   observation whenever it is free (camera rate, [`ObservationSync::poll_images`]); the
//!   decoder thread decodes the newest prefix with the newest joint state whenever it is
//!   free and a decode is due: a joint state newer than the last decoded one
//!   (`decoder_trigger = joint_state`) or a control-rate tick (`timer`). A prefix encoded
//!   with another prompt is not used.
//! - Live settings apply at the next dispatch (a frame boundary). Inputs that arrive while a
//!   stage is busy are kept in the sync buffers; the newest one wins.
//! - SM split changes are prepared on a third thread, in order, the newest pending one only
//!   (graph capture takes a while). One that fails leaves the GPU on the split it had: the
//!   scheduler takes that split back and reports it ([`Output::SplitRefused`]), so what the
//!   node says is in effect is what runs.
//! - Shutdown: no new work; in-flight work is finished (its chunks are still sent) or, after
//!   `drain_timeout`, abandoned; then the workers exit and the runner is dropped.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::Result;

use super::runner::{ActionChunk, ModelImage, PolicyRunner, Prefix};
use super::settings::{DecoderTrigger, NodeSettings};
use super::sync::{JointSample, Observation, ObservationSync, Stamp, SyncConfig};

/// What the scheduler consumes.
#[derive(Debug)]
pub enum Input {
    /// A prepared frame of camera `camera` (index into `camera_topics`).
    Frame {
        camera: usize,
        stamp: Stamp,
        image: Arc<ModelImage>,
    },
    /// A checked joint state (positions of `state_joints`).
    Joints(JointSample),
    /// New settings (only the live fields are used).
    Settings(Box<NodeSettings>),
    /// Stop: finish or drop in-flight work, then return.
    Shutdown,
}

/// What the scheduler produces.
#[derive(Debug)]
pub enum Output {
    Chunk(ActionChunk),
    /// An inference or encoding failed (the node keeps going).
    Failed {
        index: Option<u64>,
        error: String,
    },
    /// The GPU could not take `requested`; it stays on `restored`, which the scheduler's
    /// settings are back at (the node puts its parameters back too).
    SplitRefused {
        requested: SmSplit,
        restored: SmSplit,
        reason: String,
    },
}

/// The live GPU partition settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmSplit {
    pub encoder_pct: u32,
    pub decoder_pct: u32,
    pub concurrent: bool,
}

impl SmSplit {
    pub fn of(s: &NodeSettings) -> Self {
        SmSplit {
            encoder_pct: s.encoder_pct,
            decoder_pct: s.decoder_pct,
            concurrent: s.concurrent,
        }
    }

    /// Sets the split's three fields of `s`.
    pub fn write_to(self, s: &mut NodeSettings) {
        s.encoder_pct = self.encoder_pct;
        s.decoder_pct = self.decoder_pct;
        s.concurrent = self.concurrent;
    }
}

impl std::fmt::Display for SmSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "encoder {}% / decoder {}% ({})",
            self.encoder_pct,
            self.decoder_pct,
            if self.concurrent {
                "concurrent"
            } else {
                "sequential"
            }
        )
    }
}

/// Applies a split to the GPU: `Ok(Some(report))`, `Ok(None)` when the engine has no
/// partitions, or why it could not (the GPU then keeps its previous split).
pub type Reconfigure = Arc<dyn Fn(SmSplit) -> Result<Option<String>> + Send + Sync>;

/// A split change for the reconfiguration thread; `generation` orders the requests.
struct SplitJob {
    generation: u64,
    split: SmSplit,
}

enum Job {
    Infer {
        obs: Observation<ModelImage>,
        prompt: String,
        index: u64,
    },
    Encode {
        obs: Observation<ModelImage>,
        prompt: String,
    },
    Decode {
        prefix: Arc<Prefix>,
        joints: JointSample,
        index: u64,
    },
}

enum Done {
    Chunk(u64, Result<ActionChunk>),
    Prefix(Result<Prefix>),
    Split(u64, SmSplit, Result<Option<String>>),
}

/// Counters for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub inferences: u64,
    pub encodes: u64,
    pub failures: u64,
}

/// The scheduler's state; run it with [`Scheduler::run`].
pub struct Scheduler<F: Fn() -> Stamp> {
    settings: NodeSettings,
    sync: ObservationSync<ModelImage>,
    now: F,
    enc_tx: Option<std_mpsc::Sender<Job>>,
    dec_tx: Option<std_mpsc::Sender<Job>>,
    split_tx: Option<std_mpsc::Sender<SplitJob>>,
    /// The split the GPU runs (the last one applied without error).
    applied: SmSplit,
    /// Generation of the newest split request.
    split_generation: u64,
    done_rx: mpsc::UnboundedReceiver<Done>,
    workers: Vec<JoinHandle<()>>,
    enc_busy: bool,
    dec_busy: bool,
    prefix: Option<Arc<Prefix>>,
    last_decoded_joints: Option<Stamp>,
    tick_due: bool,
    next_index: u64,
    pub counters: Counters,
    /// How long shutdown waits for in-flight work.
    pub drain_timeout: Duration,
}

fn worker(
    name: &str,
    runner: Arc<PolicyRunner>,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                let d = match job {
                    Job::Infer { obs, prompt, index } => {
                        Done::Chunk(index, runner.infer(&obs, &prompt, index))
                    }
                    Job::Encode { obs, prompt } => {
                        let views: Vec<Option<&[f32]>> = obs
                            .images
                            .iter()
                            .map(|f| f.as_ref().map(|f| f.image.as_slice()))
                            .collect();
                        Done::Prefix(runner.encode(&views, &prompt, obs.stamp))
                    }
                    Job::Decode {
                        prefix,
                        joints,
                        index,
                    } => Done::Chunk(
                        index,
                        runner.decode(&prefix, &joints.positions, joints.stamp, index),
                    ),
                };
                if done.send(d).is_err() {
                    break;
                }
            }
        })
        .expect("spawn worker thread")
}

/// Applies split requests in order; of several waiting, only the newest (the older ones would
/// be replaced at once anyway).
fn split_worker(
    reconfigure: Reconfigure,
    jobs: std_mpsc::Receiver<SplitJob>,
    done: mpsc::UnboundedSender<Done>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("pi0-reconfigure".into())
        .spawn(move || {
            while let Ok(mut job) = jobs.recv() {
                while let Ok(newer) = jobs.try_recv() {
                    job = newer;
                }
                let r = reconfigure(job.split);
                if done
                    .send(Done::Split(job.generation, job.split, r))
                    .is_err()
                {
                    break;
                }
            }
        })
        .expect("spawn reconfiguration thread")
}

impl<F: Fn() -> Stamp> Scheduler<F> {
    /// Starts the worker threads. `now` is the clock the sync ages frames against.
    pub fn new(runner: Arc<PolicyRunner>, settings: NodeSettings, now: F) -> Self {
        let r = runner.clone();
        let reconfigure: Reconfigure =
            Arc::new(move |s: SmSplit| r.reconfigure(s.encoder_pct, s.decoder_pct, s.concurrent));
        Self::with_reconfigure(runner, settings, now, reconfigure)
    }

    /// [`Scheduler::new`] with another way to apply split changes (tests inject failures).
    pub fn with_reconfigure(
        runner: Arc<PolicyRunner>,
        settings: NodeSettings,
        now: F,
        reconfigure: Reconfigure,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (enc_tx, enc_rx) = std_mpsc::channel();
        let (dec_tx, dec_rx) = std_mpsc::channel();
        let (split_tx, split_rx) = std_mpsc::channel();
        let workers = vec![
            worker("pi0-encoder", runner.clone(), enc_rx, done_tx.clone()),
            worker("pi0-decoder", runner.clone(), dec_rx, done_tx.clone()),
            split_worker(reconfigure, split_rx, done_tx),
        ];
        Scheduler {
            sync: ObservationSync::new(SyncConfig::from_settings(&settings)),
            applied: SmSplit::of(&settings),
            split_generation: 0,
            settings,
            now,
            enc_tx: Some(enc_tx),
            dec_tx: Some(dec_tx),
            split_tx: Some(split_tx),
            done_rx,
            workers,
            enc_busy: false,
            dec_busy: false,
            prefix: None,
            last_decoded_joints: None,
            tick_due: false,
            next_index: 0,
            counters: Counters::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// Runs until `Input::Shutdown` (or the input channel closes) and in-flight work is done.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>, out: mpsc::Sender<Output>) {
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut control =
            tokio::time::interval(Duration::from_secs_f64(self.settings.control_period_s()));
        control.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stopping = false;
        loop {
            tokio::select! {
                ev = inputs.recv(), if !stopping => match ev {
                    Some(Input::Frame { camera, stamp, image }) => {
                        let now = (self.now)();
                        self.sync.push_frame_received(camera, stamp, now, image)
                    }
                    Some(Input::Joints(j)) => self.sync.push_joints(j),
                    Some(Input::Settings(s)) => self.apply(*s),
                    Some(Input::Shutdown) | None => stopping = true,
                },
                Some(d) = self.done_rx.recv() => {
                    if let Some(o) = self.finish(d) {
                        let _ = out.send(o).await;
                    }
                }
                _ = control.tick() => self.tick_due = true,
                _ = poll.tick() => {}
            }
            if stopping {
                break;
            }
            self.dispatch();
        }
        // Drain: no new jobs; wait for the busy stages.
        self.enc_tx = None;
        self.dec_tx = None;
        self.split_tx = None;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.enc_busy || self.dec_busy {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(d)) => {
                    if let Some(o) = self.finish(d) {
                        let _ = out.send(o).await;
                    }
                }
                _ => {
                    log::warn!(
                        "shutdown: in-flight inference abandoned after {:?}",
                        self.drain_timeout
                    );
                    return; // worker threads are detached; the process is exiting
                }
            }
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn apply(&mut self, s: NodeSettings) {
        let old = &self.settings;
        if old.concurrent != s.concurrent {
            log::info!("concurrent := {} (from the next frame)", s.concurrent);
            self.prefix = None;
        }
        if old.prompt != s.prompt {
            log::info!("prompt := {:?} (from the next observation)", s.prompt);
        }
        if (old.encoder_pct, old.decoder_pct) != (s.encoder_pct, s.decoder_pct) {
            log::info!(
                "SM split := encoder {}% / decoder {}% (from the next frame)",
                s.encoder_pct,
                s.decoder_pct
            );
        }
        let split = SmSplit::of(&s);
        if split != SmSplit::of(old) {
            self.split_generation += 1;
            if let Some(tx) = &self.split_tx {
                let _ = tx.send(SplitJob {
                    generation: self.split_generation,
                    split,
                });
            }
        }
        // Only live fields change; the rest was fixed at start.
        split.write_to(&mut self.settings);
        self.settings.prompt = s.prompt;
    }

    fn finish(&mut self, d: Done) -> Option<Output> {
        match d {
            Done::Split(generation, split, r) => self.split_done(generation, split, r),
            Done::Chunk(index, r) => {
                self.dec_busy = false;
                match r {
                    Ok(c) => {
                        self.counters.inferences += 1;
                        Some(Output::Chunk(c))
                    }
                    Err(e) => {
                        self.counters.failures += 1;
                        Some(Output::Failed {
                            index: Some(index),
                            error: e.to_string(),
                        })
                    }
                }
            }
            Done::Prefix(r) => {
                self.enc_busy = false;
                match r {
                    Ok(p) => {
                        log::debug!("prefix of {} ready ({:.1} ms)", p.stamp, p.encoder_ms);
                        self.counters.encodes += 1;
                        if self.settings.concurrent {
                            self.prefix = Some(Arc::new(p));
                        }
                        None
                    }
                    Err(e) => {
                        self.counters.failures += 1;
                        Some(Output::Failed {
                            index: None,
                            error: e.to_string(),
                        })
                    }
                }
            }
        }
    }

    /// A split change finished on the GPU (or failed there).
    fn split_done(
        &mut self,
        generation: u64,
        split: SmSplit,
        r: Result<Option<String>>,
    ) -> Option<Output> {
        match r {
            Ok(report) => {
                match report {
                    Some(report) => log::info!("GPU {report}"),
                    None => log::info!(
                        "(this engine has no SM partitions: the split {split} is recorded only)"
                    ),
                }
                self.applied = split;
                None
            }
            Err(e) => {
                log::error!("GPU reconfiguration to {split} failed: {e}");
                let superseded = generation != self.split_generation;
                if superseded {
                    // A newer request is on its way; it decides what runs.
                    return None;
                }
                let restored = self.applied;
                if self.settings.concurrent != restored.concurrent {
                    self.prefix = None;
                }
                restored.write_to(&mut self.settings);
                Some(Output::SplitRefused {
                    requested: split,
                    restored,
                    reason: e.to_string(),
                })
            }
        }
    }

    fn take_index(&mut self) -> u64 {
        let k = self.next_index;
        self.next_index += 1;
        k
    }

    fn dispatch(&mut self) {
        let now = (self.now)();
        if !self.settings.concurrent {
            if self.enc_busy || self.dec_busy {
                return;
            }
            if let Some(obs) = self.sync.poll(now) {
                self.last_decoded_joints = obs.joints.as_ref().map(|j| j.stamp);
                let index = self.take_index();
                let job = Job::Infer {
                    obs,
                    prompt: self.settings.prompt.clone(),
                    index,
                };
                if let Some(tx) = &self.dec_tx {
                    self.dec_busy = tx.send(job).is_ok();
                }
            }
            return;
        }
        if !self.enc_busy {
            if let Some(obs) = self.sync.poll_images(now) {
                log::debug!("encode {}", obs.stamp);
                let job = Job::Encode {
                    obs,
                    prompt: self.settings.prompt.clone(),
                };
                if let Some(tx) = &self.enc_tx {
                    self.enc_busy = tx.send(job).is_ok();
                }
            }
        }
        if self.dec_busy {
            return;
        }
        let Some(prefix) = self
            .prefix
            .as_ref()
            .filter(|p| p.prompt == self.settings.prompt)
            .cloned()
        else {
            return;
        };
        let Some(joints) = self.sync.latest_joints(now) else {
            return;
        };
        let due = match self.settings.decoder_trigger {
            DecoderTrigger::JointState => self.last_decoded_joints.is_none_or(|s| joints.stamp > s),
            DecoderTrigger::Timer => self.tick_due,
        };
        if !due {
            return;
        }
        self.tick_due = false;
        log::debug!("decode joints {} on prefix {}", joints.stamp, prefix.stamp);
        self.last_decoded_joints = Some(joints.stamp);
        let index = self.take_index();
        if let Some(tx) = &self.dec_tx {
            self.dec_busy = tx
                .send(Job::Decode {
                    prefix,
                    joints,
                    index,
                })
                .is_ok();
        }
    }
}

/// Spawns a scheduler on the current tokio runtime; returns the input sender, the output
/// receiver and the task (it ends after `Input::Shutdown` and the drain).
pub fn spawn(
    runner: Arc<PolicyRunner>,
    settings: NodeSettings,
    now: impl Fn() -> Stamp + Send + 'static,
) -> (
    mpsc::Sender<Input>,
    mpsc::Receiver<Output>,
    tokio::task::JoinHandle<()>,
) {
    run_scheduler(Scheduler::new(runner, settings, now))
}

/// [`spawn`] with another way to apply split changes (tests inject GPU failures).
pub fn spawn_with_reconfigure(
    runner: Arc<PolicyRunner>,
    settings: NodeSettings,
    now: impl Fn() -> Stamp + Send + 'static,
    reconfigure: Reconfigure,
) -> (
    mpsc::Sender<Input>,
    mpsc::Receiver<Output>,
    tokio::task::JoinHandle<()>,
) {
    run_scheduler(Scheduler::with_reconfigure(
        runner,
        settings,
        now,
        reconfigure,
    ))
}

fn run_scheduler<F: Fn() -> Stamp + Send + 'static>(
    sched: Scheduler<F>,
) -> (
    mpsc::Sender<Input>,
    mpsc::Receiver<Output>,
    tokio::task::JoinHandle<()>,
) {
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let task = tokio::spawn(sched.run(in_rx, out_tx));
    (in_tx, out_rx, task)
}
