//! `PartitionedPi0`: the two stages on SM-partitioned streams, sequential or concurrent, with
//! double-buffered prefix slots, a streaming API and live reconfiguration at frame boundaries.
//! The streaming API is in streaming.rs, graph capture (off the hot path) in capture.rs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::device::{green_layout, GreenGroups, Partition};
use super::runtime_kernels::gpu;
use super::spans::{SpanRecorder, StageSpan};
use super::split::{plan, Backend, PlanKey, SmLayout, SplitPlan, SplitRequest};
use super::stage::{upload_where, GraphUpload, StageEngine, StageGraph};
use super::swap::{BoundedCache, FrameBoundarySwap, ObsId, SlotState, SlotTable, Stage};
use crate::engine::ModelInput;
use crate::error::{Error, Result};

#[path = "capture.rs"]
mod capture;
#[path = "streaming.rs"]
mod streaming;

/// How the pipeline starts.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub backend: Backend,
    pub split: SplitRequest,
    /// Encoder of frame t+1 overlaps the decoder of frame t.
    pub concurrent: bool,
    /// Run each stage as a CUDA graph captured on its partition's stream.
    pub use_graphs: bool,
    /// Prepared splits (contexts, streams, graphs) kept for fast switching.
    pub cache_capacity: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            backend: Backend::Green,
            split: SplitRequest::whole(),
            concurrent: false,
            use_graphs: true,
            cache_capacity: 6,
        }
    }
}

/// The split, backend and mode as they run, with the SM counts the driver gave.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionInfo {
    pub backend: Backend,
    pub request: SplitRequest,
    pub encoder_sms: u32,
    pub decoder_sms: u32,
    pub shared_sms: u32,
    pub total_sms: u32,
    pub concurrent: bool,
    pub use_graphs: bool,
}

/// What `set_split`/`reconfigure` did.
#[derive(Clone, Debug)]
pub struct SwitchReport {
    pub generation: u64,
    pub from: PartitionInfo,
    pub to: PartitionInfo,
    /// The split was prepared before (contexts, streams and graphs reused).
    pub cache_hit: bool,
    /// Creating contexts/streams and capturing graphs, off the hot path.
    pub prepare_ms: f64,
    /// Of which graph capture.
    pub capture_ms: f64,
}

/// When a published configuration reached each stage.
#[derive(Clone, Debug, Default)]
pub struct SwitchRecord {
    pub generation: u64,
    pub prepare_ms: f64,
    pub cache_hit: bool,
    /// From publication to the first frame of the stage on the new configuration.
    pub encoder_applied_ms: Option<f64>,
    pub decoder_applied_ms: Option<f64>,
    /// Host time the stage spent at its boundary switching (fence + swap).
    pub encoder_swap_us: Option<f64>,
    pub decoder_swap_us: Option<f64>,
    published: Option<Instant>,
}

/// One action chunk, stamped with the observation whose prefix it used.
#[derive(Clone, Debug)]
pub struct ActionChunk {
    pub actions: Vec<f32>,
    /// The observation whose prefix K/V the decoder read.
    pub prefix_obs: ObsId,
    /// `forward`: the id given to this call's observation (equal to `prefix_obs` when
    /// sequential; the next chunk uses it when concurrent). `request_actions`: None.
    pub input_obs: Option<ObsId>,
    /// Request to actions on the host (upload + decoder + download).
    pub latency_ms: f64,
    pub encoder_sms: u32,
    pub decoder_sms: u32,
    pub generation: u64,
}

/// Counters of the streaming API.
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    pub submitted: u64,
    pub encoded: u64,
    /// Observations replaced by a newer one before their encoder started.
    pub dropped: u64,
    pub decoded: u64,
    pub encoder_errors: u64,
    pub last_error: Option<String>,
}

/// Graphs of one stage of one split: per prefix slot, (input-shape key, graph).
type GraphSet = Mutex<Vec<Option<(u64, StageGraph)>>>;

/// A prepared split: its partition and the graphs captured on its streams. A graph is valid
/// for the input shape it was captured at (views, prompt length, chunk); a frame whose shape
/// has no graph runs eagerly and asks the capture thread for one (off the hot path).
pub struct PreparedSplit {
    // Graphs before the partition: dropped first (they hold its streams).
    enc_graphs: GraphSet,
    dec_graphs: GraphSet,
    requested: Mutex<Vec<(Stage, usize, u64)>>,
    pub capture_ms: f64,
    pub partition: Partition,
}

impl PreparedSplit {
    fn graphs(&self, stage: Stage) -> &GraphSet {
        match stage {
            Stage::Encoder => &self.enc_graphs,
            Stage::Decoder => &self.dec_graphs,
        }
    }
    /// The stream `stage` runs on in this split.
    fn stream(&self, stage: Stage) -> &Arc<CudaStream> {
        match stage {
            Stage::Encoder => &self.partition.encoder_stream,
            Stage::Decoder => &self.partition.decoder_stream,
        }
    }
    /// Launches the graph of `slot` on the stage's stream if one matches `shape`.
    fn launch(&self, stage: Stage, slot: usize, shape: Option<u64>) -> Result<bool> {
        let stream = self.stream(stage);
        let Some(k) = shape else { return Ok(false) };
        let g = lock(self.graphs(stage));
        match g.get(slot) {
            Some(Some((gk, graph))) if *gk == k => {
                graph.launch_on(stream)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

struct CaptureJob<E: StageEngine> {
    prepared: std::sync::Weak<PreparedSplit>,
    stage: Stage,
    slot: usize,
    _e: std::marker::PhantomData<fn() -> E>,
}

#[derive(Clone)]
struct Active {
    prepared: Arc<PreparedSplit>,
    concurrent: bool,
    use_graphs: bool,
}

struct Slots {
    table: SlotTable,
    written: Vec<Option<Arc<CudaEvent>>>,
    last_read: Vec<Option<Arc<CudaEvent>>>,
}

impl Slots {
    /// Promotes finished encoder runs to Ready.
    fn refresh(&mut self) {
        for i in 0..self.table.states.len() {
            if let SlotState::Writing(o) = self.table.states[i] {
                if self.written[i].as_ref().is_some_and(|e| e.is_complete()) {
                    self.table.states[i] = SlotState::Ready(o);
                }
            }
        }
    }
}

#[derive(Default)]
struct StageRun {
    last: Option<Arc<CudaEvent>>,
}

struct Pending {
    obs: Option<(ObsId, ModelInput)>,
}

struct Inner<E: StageEngine> {
    engine: E,
    ctx: Arc<CudaContext>,
    /// Observations are copied to the GPU on this stream (no SMs, copy engine only), so the
    /// copy of the next observation overlaps the encoder still running on the previous one
    /// instead of queueing behind it on the encoder's stream. None: on the encoder's stream
    /// (`PI0_UPLOAD_STREAM=off`, the comparison knob).
    upload: Option<Arc<CudaStream>>,
    total_sms: u32,
    green: Option<GreenGroups>,
    green_err: Option<String>,
    /// The backend `forward_mps` partitions with when the current one is `none`: the last
    /// partitioning backend configured (green unless the options said mps).
    partition_backend: Mutex<Backend>,
    cache: Mutex<BoundedCache<PlanKey, Arc<PreparedSplit>>>,
    swap: Mutex<FrameBoundarySwap<Active>>,
    slots: Mutex<Slots>,
    slots_cv: Condvar,
    enc: Mutex<StageRun>,
    dec: Mutex<StageRun>,
    seq: Mutex<()>,
    reconfig: Mutex<()>,
    pending: Mutex<Pending>,
    pending_cv: Condvar,
    next_obs: AtomicU64,
    stats: Mutex<StreamStats>,
    switches: Mutex<Vec<SwitchRecord>>,
    captures: Mutex<std::collections::VecDeque<CaptureJob<E>>>,
    captures_cv: Condvar,
    capture_ms: Mutex<Vec<f64>>,
    capture_lock: Mutex<()>,
    /// GPU timestamps around stage launches, when a study turns them on.
    spans: SpanRecorder,
    stop: AtomicBool,
}

/// `PI0_UPLOAD_STREAM=off` copies observations on the encoder's own stream (the old way).
fn upload_stream_wanted() -> bool {
    std::env::var("PI0_UPLOAD_STREAM").map_or(true, |v| v != "off")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Range;
impl Range {
    fn new(name: &str) -> Range {
        nvtx::range_push!("{}", name);
        Range
    }
}
impl Drop for Range {
    fn drop(&mut self) {
        nvtx::range_pop!();
    }
}

/// π0 stages on SM-partitioned streams. `Send + Sync`: share it in an `Arc`; the streaming
/// calls block the calling thread on the GPU (from tokio, use `spawn_blocking`).
pub struct PartitionedPi0<E: StageEngine + 'static> {
    inner: Arc<Inner<E>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    capturer: Mutex<Option<JoinHandle<()>>>,
}

impl<E: StageEngine + 'static> PartitionedPi0<E> {
    /// Builds the pipeline on device `ctx` around `engine` and prepares the first split.
    pub fn new(ctx: Arc<CudaContext>, engine: E, opts: PipelineOptions) -> Result<Self> {
        let slots_n = engine.prefix_slots();
        if slots_n < 2 {
            return Err(Error::Gpu(format!(
                "the engine has {slots_n} prefix slot(s); the pipeline needs at least 2"
            )));
        }
        let total_sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(gpu("SM count"))? as u32;
        let (green, green_err) = match GreenGroups::new(&ctx) {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let probe_plan = plan(
            Backend::None,
            SplitRequest::whole(),
            SmLayout::uniform(total_sms, 1),
        )?;
        // A placeholder active configuration; replaced below before any frame runs.
        let placeholder = Arc::new(PreparedSplit {
            enc_graphs: Mutex::new(vec![]),
            dec_graphs: Mutex::new(vec![]),
            requested: Mutex::new(vec![]),
            capture_ms: 0.0,
            partition: Partition::create(&ctx, probe_plan, None, total_sms)?,
        });
        let upload = match upload_stream_wanted() {
            true => Some(ctx.new_stream().map_err(gpu("upload stream"))?),
            false => None,
        };
        let inner = Arc::new(Inner {
            ctx,
            upload,
            total_sms,
            green,
            green_err,
            partition_backend: Mutex::new(if opts.backend == Backend::Mps {
                Backend::Mps
            } else {
                Backend::Green
            }),
            cache: Mutex::new(BoundedCache::new(opts.cache_capacity)),
            swap: Mutex::new(FrameBoundarySwap::new(Active {
                prepared: placeholder,
                concurrent: opts.concurrent,
                use_graphs: false,
            })),
            slots: Mutex::new(Slots {
                table: SlotTable::new(slots_n),
                written: vec![None; slots_n],
                last_read: vec![None; slots_n],
            }),
            slots_cv: Condvar::new(),
            enc: Mutex::new(StageRun::default()),
            dec: Mutex::new(StageRun::default()),
            seq: Mutex::new(()),
            reconfig: Mutex::new(()),
            pending: Mutex::new(Pending { obs: None }),
            pending_cv: Condvar::new(),
            next_obs: AtomicU64::new(1),
            stats: Mutex::new(StreamStats::default()),
            switches: Mutex::new(Vec::new()),
            captures: Mutex::new(Default::default()),
            captures_cv: Condvar::new(),
            capture_ms: Mutex::new(Vec::new()),
            capture_lock: Mutex::new(()),
            spans: SpanRecorder::default(),
            stop: AtomicBool::new(false),
            engine,
        });
        let p = PartitionedPi0 {
            inner,
            worker: Mutex::new(None),
            capturer: Mutex::new(None),
        };
        p.reconfigure(opts.backend, opts.split, opts.concurrent, opts.use_graphs)?;
        Ok(p)
    }

    pub fn engine(&self) -> &E {
        &self.inner.engine
    }
    /// Forgets every prepared split, so that the next `reconfigure` to any of them prepares it
    /// and captures its graphs again (benchmarks comparing engine plans in one process). The
    /// active split keeps running on what it holds until the next switch.
    pub fn forget_prepared_splits(&self) {
        // Freed after the cache lock is released (freeing a split destroys its contexts).
        let dropped = lock(&self.inner.cache).clear();
        drop(dropped);
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }
    pub fn total_sms(&self) -> u32 {
        self.inner.total_sms
    }

    /// The configuration new frames start with (SM counts as the driver reports them).
    pub fn partition(&self) -> PartitionInfo {
        let a = lock(&self.inner.swap).current().clone();
        info(&a, self.inner.total_sms)
    }

    /// The streams of the current partition (encoder, decoder), e.g. for probes.
    pub fn streams(&self) -> (Arc<CudaStream>, Arc<CudaStream>) {
        let a = lock(&self.inner.swap).current().clone();
        (
            a.prepared.partition.encoder_stream.clone(),
            a.prepared.partition.decoder_stream.clone(),
        )
    }

    /// Changes the split; takes effect at each stage's next frame boundary. Validates first
    /// (out of range: an error, nothing changes); prepares off the hot path (in this thread).
    pub fn set_split(&self, encoder_pct: u32, decoder_pct: u32) -> Result<SwitchReport> {
        let req = SplitRequest::new(encoder_pct, decoder_pct)?;
        let a = lock(&self.inner.swap).current().clone();
        self.reconfigure(
            a.prepared.partition.plan.backend,
            req,
            a.concurrent,
            a.use_graphs,
        )
    }

    /// Changes backend and/or mode (and split) at the next frame boundary.
    pub fn reconfigure(
        &self,
        backend: Backend,
        split: SplitRequest,
        concurrent: bool,
        use_graphs: bool,
    ) -> Result<SwitchReport> {
        split.validate()?;
        let inner = &self.inner;
        let _one = lock(&inner.reconfig);
        let t0 = Instant::now();
        let layout = match backend {
            Backend::Green => match &inner.green {
                Some(g) => g.layout,
                None => {
                    return Err(Error::Gpu(format!(
                        "green contexts are not available on this GPU/driver ({}); use partition=mps or none",
                        inner.green_err.as_deref().unwrap_or("unknown")
                    )))
                }
            },
            _ => SmLayout::uniform(inner.total_sms, 1),
        };
        let plan = plan(backend, split, layout)?;
        let from = self.partition();
        let cached = lock(&inner.cache).get(&plan.key());
        let (prepared, hit) = match cached {
            Some(p) => (p, true),
            _ => (Arc::new(self.prepare(plan, use_graphs)?), false),
        };
        let capture_ms = if hit { 0.0 } else { prepared.capture_ms };
        let evicted = lock(&inner.cache).insert(plan.key(), prepared.clone());
        let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;
        let active = Active {
            prepared,
            concurrent,
            use_graphs,
        };
        let to = info(&active, inner.total_sms);
        let generation = {
            let mut sw = lock(&inner.swap);
            let g = sw.publish(active);
            lock(&inner.switches).push(SwitchRecord {
                generation: g,
                prepare_ms,
                cache_hit: hit,
                published: Some(Instant::now()),
                ..Default::default()
            });
            g
        };
        // Evicted splits are freed when the last frame running on them lets go (Arc).
        drop(evicted);
        log::info!(
            "partition switch #{generation}: {} {} -> {} {} (encoder {} SMs, decoder {} SMs, {}), \
             prepared in {prepare_ms:.2} ms{}",
            from.backend,
            from.request,
            to.backend,
            to.request,
            to.encoder_sms,
            to.decoder_sms,
            if concurrent {
                "concurrent"
            } else {
                "sequential"
            },
            if hit { " (cached)" } else { "" }
        );
        if backend != Backend::None {
            *lock(&inner.partition_backend) = backend;
        }
        inner.slots_cv.notify_all();
        Ok(SwitchReport {
            generation,
            from,
            to,
            cache_hit: hit,
            prepare_ms,
            capture_ms,
        })
    }

    fn prepare(&self, plan: SplitPlan, use_graphs: bool) -> Result<PreparedSplit> {
        let inner = &self.inner;
        let partition = Partition::create(&inner.ctx, plan, inner.green.as_ref(), inner.total_sms)?;
        let n = inner.engine.prefix_slots();
        let prepared = PreparedSplit {
            enc_graphs: Mutex::new((0..n).map(|_| None).collect()),
            dec_graphs: Mutex::new((0..n).map(|_| None).collect()),
            requested: Mutex::new(vec![]),
            capture_ms: 0.0,
            partition,
        };
        let t0 = Instant::now();
        if use_graphs {
            self.capture_all(&prepared)?;
        }
        inner.ctx.bind_to_thread().map_err(gpu("bind context"))?;
        Ok(PreparedSplit {
            capture_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..prepared
        })
    }

    /// Starts `run` on its own thread (named `name`, kept in `handle`) unless it runs already.
    fn ensure_thread(
        &self,
        handle: &Mutex<Option<JoinHandle<()>>>,
        name: &str,
        run: fn(&Self),
    ) -> Result<()> {
        let mut h = lock(handle);
        if h.is_some() {
            return Ok(());
        }
        let me = PartitionedPi0 {
            inner: self.inner.clone(),
            worker: Mutex::new(None),
            capturer: Mutex::new(None),
        };
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&me))
            .map_err(|e| Error::Gpu(format!("{name} thread: {e}")))?;
        *h = Some(t);
        Ok(())
    }

    /// Switch records: when each configuration reached each stage.
    pub fn switch_history(&self) -> Vec<SwitchRecord> {
        lock(&self.inner.switches).clone()
    }

    pub fn stream_stats(&self) -> StreamStats {
        lock(&self.inner.stats).clone()
    }

    // ---- the two stages ------------------------------------------------------------------

    /// Takes the split `stage` runs on for this frame. On a switch the new stream is ordered
    /// after the stage's last work on the old one (stage scratch is shared across partitions)
    /// and the switch is recorded.
    /// Returns the split and the swap generation it belongs to.
    fn enter_stage(&self, stage: Stage, run: &StageRun) -> Result<(Active, u64)> {
        let t_sw = Instant::now();
        let (active, switched, gen) = {
            let mut sw = lock(&self.inner.swap);
            let (a, s) = sw.acquire(stage);
            (a, s, sw.generation())
        };
        if switched {
            if let Some(ev) = &run.last {
                let stream = active.prepared.stream(stage);
                stream.wait(ev).map_err(gpu("fence"))?;
            }
            self.note_switch(stage, gen, t_sw.elapsed().as_secs_f64() * 1e6);
        }
        Ok((active, gen))
    }

    /// Runs `stage` on `slot`: its captured graph when one matches `shape`, else `enqueue`
    /// eagerly on the stage's stream (and asks for a capture off the hot path).
    fn launch_stage(
        &self,
        active: &Active,
        stage: Stage,
        slot: usize,
        shape: Option<u64>,
        enqueue: impl FnOnce(&Arc<CudaStream>) -> Result<()>,
    ) -> Result<()> {
        let p = &active.prepared;
        self.inner.spans.around(p.stream(stage), stage, || {
            if !(active.use_graphs && p.launch(stage, slot, shape)?) {
                enqueue(p.stream(stage))?;
                if let (true, Some(k)) = (active.use_graphs, shape) {
                    self.request_capture(p, stage, slot, k);
                }
            }
            Ok(())
        })
    }

    fn note_switch(&self, stage: Stage, gen: u64, swap_us: f64) {
        let mut sw = lock(&self.inner.switches);
        if let Some(r) = sw.iter_mut().rev().find(|r| r.generation == gen) {
            let applied = r.published.map(|p| p.elapsed().as_secs_f64() * 1e3);
            match stage {
                Stage::Encoder => {
                    r.encoder_applied_ms = r.encoder_applied_ms.or(applied);
                    r.encoder_swap_us = r.encoder_swap_us.or(Some(swap_us));
                }
                Stage::Decoder => {
                    r.decoder_applied_ms = r.decoder_applied_ms.or(applied);
                    r.decoder_swap_us = r.decoder_swap_us.or(Some(swap_us));
                }
            }
        }
    }

    /// Enqueues the encoder of `obs` into a free slot; returns the slot and its done event.
    fn run_encoder(&self, obs: ObsId, input: &ModelInput) -> Result<(usize, Arc<CudaEvent>)> {
        let inner = &self.inner;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (slot, last_read, last_written) = {
            let mut s = lock(&inner.slots);
            loop {
                s.refresh();
                if let Some(i) = s.table.slot_to_write() {
                    s.table.states[i] = SlotState::Writing(obs);
                    let last_written = s.written[i].take();
                    break (i, s.last_read[i].clone(), last_written);
                }
                if Instant::now() > deadline {
                    return Err(Error::Gpu("no prefix slot became free in 30 s".into()));
                }
                s = inner
                    .slots_cv
                    .wait_timeout(s, Duration::from_millis(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let res = (|| {
            let mut run = lock(&inner.enc);
            let (active, _) = self.enter_stage(Stage::Encoder, &run)?;
            let stream = active.prepared.stream(Stage::Encoder);
            if let Some(ev) = &last_read {
                stream.wait(ev).map_err(gpu("slot fence"))?;
            }
            let _r = Range::new("encoder");
            match &inner.upload {
                Some(up) => {
                    // The slot's images were last read by the encoder that wrote it; uploads
                    // run in order on this one stream, so a wait here also covers later ones.
                    // The host already guarantees it (a slot is claimed only once `refresh`
                    // saw that event complete: `slot_to_write` skips Writing slots, tested in
                    // swap.rs), so this wait costs nothing and keeps the rule on the GPU too.
                    if let Some(ev) = &last_written {
                        up.wait(ev).map_err(gpu("upload fence"))?;
                    }
                    inner.engine.upload_observation(up, slot, input)?;
                    let copied = up.record_event(None).map_err(gpu("record"))?;
                    stream.wait(&copied).map_err(gpu("upload wait"))?;
                }
                None => inner.engine.upload_observation(stream, slot, input)?,
            }
            let shape = inner.engine.encoder_shape(slot);
            self.launch_stage(&active, Stage::Encoder, slot, shape, |st| {
                inner.engine.enqueue_encoder(st, slot)
            })?;
            let ev = Arc::new(stream.record_event(None).map_err(gpu("record"))?);
            run.last = Some(ev.clone());
            Ok(ev)
        })();
        let mut s = lock(&inner.slots);
        match res {
            Ok(ev) => {
                s.written[slot] = Some(ev.clone());
                Ok((slot, ev))
            }
            Err(e) => {
                s.table.states[slot] = SlotState::Empty;
                inner.slots_cv.notify_all();
                Err(e)
            }
        }
    }

    /// Runs the decoder on the prefix in `slot` (pinned by the caller) and downloads actions.
    fn run_decoder(
        &self,
        slot: usize,
        obs: ObsId,
        state: &[f32],
        noise: &[f32],
    ) -> Result<ActionChunk> {
        let (chunk, _) = self.run_decoder_with(slot, obs, state, noise, || Ok(()))?;
        Ok(chunk)
    }

    /// `run_decoder`, running `meanwhile` on the host after the decoder is enqueued and before
    /// its actions are waited for. The decoder's result comes back even if `meanwhile` fails.
    fn run_decoder_with<T>(
        &self,
        slot: usize,
        obs: ObsId,
        state: &[f32],
        noise: &[f32],
        meanwhile: impl FnOnce() -> Result<T>,
    ) -> Result<(ActionChunk, Result<T>)> {
        let inner = &self.inner;
        let t0 = Instant::now();
        struct Unpin<'a, E: StageEngine>(&'a Inner<E>, usize, bool);
        impl<E: StageEngine> Drop for Unpin<'_, E> {
            fn drop(&mut self) {
                if !self.2 {
                    let mut s = lock(&self.0.slots);
                    s.table.pins[self.1] -= 1;
                    self.0.slots_cv.notify_all();
                }
            }
        }
        let mut unpin = Unpin(inner, slot, false);
        let written = lock(&inner.slots).written[slot].clone();
        let mut run = lock(&inner.dec);
        let (active, gen) = self.enter_stage(Stage::Decoder, &run)?;
        let p = &active.prepared;
        let stream = p.stream(Stage::Decoder);
        if let Some(ev) = &written {
            stream.wait(ev).map_err(gpu("prefix fence"))?;
        }
        let _r = Range::new("decoder");
        inner.engine.upload_decoder_inputs(stream, state, noise)?;
        let shape = inner.engine.decoder_shape(slot);
        self.launch_stage(&active, Stage::Decoder, slot, shape, |st| {
            inner.engine.enqueue_decoder(st, slot)
        })?;
        let ev = Arc::new(stream.record_event(None).map_err(gpu("record"))?);
        {
            let mut s = lock(&inner.slots);
            s.last_read[slot] = Some(ev.clone());
            s.table.pins[slot] -= 1;
            unpin.2 = true;
            inner.slots_cv.notify_all();
        }
        run.last = Some(ev);
        let other = meanwhile();
        let actions = inner.engine.download_actions(stream)?;
        drop(run);
        lock(&inner.stats).decoded += 1;
        let chunk = ActionChunk {
            actions,
            prefix_obs: obs,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            encoder_sms: p.partition.encoder_sms,
            decoder_sms: p.partition.decoder_sms,
            generation: gen,
            input_obs: None,
        };
        Ok((chunk, other))
    }

    fn pin(&self, slot: usize) -> ObsId {
        let mut s = lock(&self.inner.slots);
        s.table.pins[slot] += 1;
        s.table.states[slot].obs().unwrap_or(0)
    }

    // ---- one-call API ---------------------------------------------------------------------

    /// The reference's `forward_mps`: runs one observation with the encoder and decoder on
    /// `encoder_pct` / `decoder_pct` of the SMs. The split is applied first if it differs
    /// (prepared and cached; an invalid split is an error and nothing changes).
    ///
    /// * `concurrent = false`: encoder then decoder of this observation.
    /// * `concurrent = true`: pipelined: this observation's encoder overlaps the decoder, which
    ///   runs on the previous call's prefix (the first call waits for its own). The returned
    ///   chunk's `prefix_obs` says which observation it used.
    pub fn forward_mps(
        &self,
        input: &ModelInput,
        noise: &[f32],
        encoder_pct: u32,
        decoder_pct: u32,
        concurrent: bool,
    ) -> Result<ActionChunk> {
        let req = SplitRequest::new(encoder_pct, decoder_pct)?;
        let cur = self.partition();
        // An explicit split always partitions: on `none`, use the partitioning backend.
        let backend = match cur.backend {
            Backend::None if !req.is_whole() => *lock(&self.inner.partition_backend),
            b => b,
        };
        if cur.request != req || cur.concurrent != concurrent || cur.backend != backend {
            self.reconfigure(backend, req, concurrent, cur.use_graphs)?;
        }
        self.forward(input, noise)
    }

    /// One frame with the current configuration (see `forward_mps`).
    pub fn forward(&self, input: &ModelInput, noise: &[f32]) -> Result<ActionChunk> {
        let concurrent = lock(&self.inner.swap).current().concurrent;
        let obs = self.inner.next_obs.fetch_add(1, Ordering::Relaxed);
        let decoder_first = concurrent && !encoder_first();
        let prev = if decoder_first {
            lock(&self.inner.slots).table.newest_before(obs)
        } else {
            None
        };
        if let Some((slot, pobs)) = prev {
            // Concurrent with a previous prefix: the decoder goes first (its inputs are a few
            // hundred bytes), and this observation's images are staged and its encoder
            // enqueued while the decoder runs, so neither stage idles through the other's
            // host work.
            self.pin(slot);
            let (mut chunk, enc) =
                self.run_decoder_with(slot, pobs, &input.state, noise, || {
                    second_stage_delay();
                    self.run_encoder(obs, input)
                })?;
            enc?;
            chunk.input_obs = Some(obs);
            lock(&self.inner.slots).refresh();
            return Ok(chunk);
        }
        let (slot_e, _ev) = self.run_encoder(obs, input)?;
        if concurrent {
            second_stage_delay();
        }
        let (slot, pobs) = if concurrent {
            let prev = lock(&self.inner.slots).table.newest_before(obs);
            prev.unwrap_or((slot_e, obs))
        } else {
            (slot_e, obs)
        };
        self.pin(slot);
        let mut chunk = self.run_decoder(slot, pobs, &input.state, noise)?;
        chunk.input_obs = Some(obs);
        lock(&self.inner.slots).refresh();
        Ok(chunk)
    }

    /// Runs only the encoder of `input` (on the encoder partition) and waits for it; the
    /// prefix becomes the newest complete one. Returns its observation id.
    pub fn encode(&self, input: &ModelInput) -> Result<ObsId> {
        let obs = self.inner.next_obs.fetch_add(1, Ordering::Relaxed);
        let (slot, ev) = self.run_encoder(obs, input)?;
        ev.synchronize().map_err(gpu("encoder sync"))?;
        let mut s = lock(&self.inner.slots);
        s.table.states[slot] = SlotState::Ready(obs);
        drop(s);
        self.inner.slots_cv.notify_all();
        Ok(obs)
    }

    /// Study tool: turns GPU timestamps around every stage launch on or off (two timing
    /// events per launch); either way the spans recorded so far are dropped.
    pub fn record_stage_spans(&self, on: bool) {
        self.inner.spans.set(on);
    }

    /// The stage spans recorded since `record_stage_spans(true)`, in launch order (waits for
    /// them); clears the record.
    pub fn take_stage_spans(&self) -> Result<Vec<StageSpan>> {
        self.inner.spans.take()
    }

    /// Waits until every enqueued frame has finished.
    pub fn synchronize(&self) -> Result<()> {
        let (e, d) = {
            let a = lock(&self.inner.swap).current().clone();
            (
                a.prepared.partition.encoder_stream.clone(),
                a.prepared.partition.decoder_stream.clone(),
            )
        };
        for r in [&self.inner.enc, &self.inner.dec] {
            if let Some(ev) = lock(r).last.clone() {
                ev.synchronize().map_err(gpu("sync"))?;
            }
        }
        e.synchronize().map_err(gpu("sync"))?;
        d.synchronize().map_err(gpu("sync"))?;
        lock(&self.inner.slots).refresh();
        Ok(())
    }
}

impl<E: StageEngine + 'static> Drop for PartitionedPi0<E> {
    fn drop(&mut self) {
        let w = self.worker.get_mut().map(|w| w.take()).unwrap_or(None);
        let c = self.capturer.get_mut().map(|w| w.take()).unwrap_or(None);
        if w.is_some() || c.is_some() {
            self.inner.stop.store(true, Ordering::Relaxed);
            self.inner.pending_cv.notify_all();
            self.inner.captures_cv.notify_all();
        }
        for h in [w, c].into_iter().flatten() {
            let _ = h.join();
        }
        if self.worker.get_mut().is_ok() && Arc::strong_count(&self.inner) == 1 {
            let _ = self.synchronize();
        }
    }
}

fn info(a: &Active, total: u32) -> PartitionInfo {
    let p = &a.prepared.partition;
    PartitionInfo {
        backend: p.plan.backend,
        request: p.plan.request,
        encoder_sms: p.encoder_sms,
        decoder_sms: p.decoder_sms,
        shared_sms: p.shared_sms,
        total_sms: total,
        concurrent: a.concurrent,
        use_graphs: a.use_graphs,
    }
}

/// The green-context layout of the device (for reports): SMs, granularity, whole groups.
pub fn device_layout(ctx: &Arc<CudaContext>) -> Result<SmLayout> {
    match GreenGroups::new(ctx) {
        Ok(g) => Ok(g.layout),
        Err(_) => green_layout(ctx),
    }
}

/// Study knob `PI0_STAGE_DELAY_US`: the concurrent `forward` enqueues its second stage (the
/// encoder; the decoder with `PI0_FWD_ENCODER_FIRST=1`) that many µs after the first, to tell
/// whether the pair's frame depends on how the two stages' kernels line up. Read each frame
/// (a benchmark sweeps it in one process) only when it was set at the first frame.
fn second_stage_delay() {
    static STUDY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*STUDY.get_or_init(|| std::env::var_os("PI0_STAGE_DELAY_US").is_some()) {
        return;
    }
    let us: u64 = std::env::var("PI0_STAGE_DELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// `PI0_FWD_ENCODER_FIRST=1`: concurrent `forward` enqueues the encoder before the decoder
/// (the order before the decoder-first change; comparison knob, read once).
fn encoder_first() -> bool {
    static FIRST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FIRST.get_or_init(|| std::env::var("PI0_FWD_ENCODER_FIRST").is_ok_and(|v| v == "1"))
}
