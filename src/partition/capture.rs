//! Graph capture for `PartitionedPi0`: each split's stage graphs are captured on capture
//! streams of the split's own partitions, off the hot path, by a capturer thread (a graph is
//! bound to the SMs it was captured on); plus the study tools that capture a split's graphs
//! again and keep the fastest set.

use super::*;

impl<E: StageEngine + 'static> PartitionedPi0<E> {
    /// Drops the current split's graphs and captures them again on the same streams, after
    /// the enqueued frames finish. Measurement tool: a re-made 50-50 split is in one of two
    /// states ~0.25 ms of frame apart (partition-notes v18); this tells whether the state
    /// lives in the graphs or in the split's contexts and streams.
    pub fn recapture_graphs(&self) -> Result<()> {
        self.synchronize()?;
        let a = lock(&self.inner.swap).current().clone();
        // Dropped before the capture (and outside the graph locks: destroying a graph exec
        // may wait on the driver).
        drop(take_graphs(&a.prepared));
        self.capture_again(&a)
    }

    /// Captures the graphs of `a`'s split anew (any slot whose graph was taken out), on the
    /// calling thread, then binds the pipeline's context back to it.
    fn capture_again(&self, a: &Active) -> Result<()> {
        lock(&a.prepared.requested).clear();
        if a.use_graphs {
            self.capture_all(&a.prepared)?;
        }
        self.inner.ctx.bind_to_thread().map_err(gpu("bind context"))
    }

    /// Captures the current split's graphs again `candidates - 1` times and keeps the set that
    /// `time` (one measurement of the current configuration, lower is better) rates fastest.
    /// Returns every candidate's time in capture order; a tie keeps the earlier set. Why: a
    /// re-made split's graphs land in run states up to ~5 % of frame apart, set when they are
    /// instantiated (partition-notes v18-v25; recaptures of one split differed by ≤ 0.6 %);
    /// the kept set is never recaptured by itself, so its state lasts while the split is
    /// cached. Earlier candidates stay alive while later ones are made, so a new instance
    /// cannot reuse a freed one's memory. Results do not change (same kernels).
    pub fn keep_fastest_graphs(
        &self,
        candidates: usize,
        mut time: impl FnMut() -> Result<f64>,
    ) -> Result<Vec<f64>> {
        let a = lock(&self.inner.swap).current().clone();
        let p = &a.prepared;
        let mut times = vec![time()?];
        if !a.use_graphs {
            return Ok(times);
        }
        let mut best = times[0];
        for _ in 1..candidates {
            self.synchronize()?;
            let held = take_graphs(p);
            self.capture_again(&a)?;
            let t = time()?;
            times.push(t);
            self.synchronize()?;
            if t < best {
                best = t;
                // Dropped outside the graph locks (destroying a graph exec may wait).
                drop(held);
            } else {
                let mut newer = Vec::new();
                for (stage, old) in [Stage::Encoder, Stage::Decoder].into_iter().zip(held) {
                    let mut g = lock(p.graphs(stage));
                    for (cur, kept) in g.iter_mut().zip(old) {
                        newer.push(std::mem::replace(cur, kept));
                    }
                }
                drop(newer);
            }
        }
        Ok(times)
    }

    /// Captures every slot's encoder graph, then every slot's decoder graph, for the shapes
    /// already seen; others are captured on demand.
    pub(super) fn capture_all(&self, p: &PreparedSplit) -> Result<()> {
        for stage in [Stage::Encoder, Stage::Decoder] {
            for slot in 0..self.inner.engine.prefix_slots() {
                self.capture_one(p, stage, slot)?;
            }
        }
        Ok(())
    }

    /// The graph-capture streams of the current partition (same contexts as `streams()`).
    pub fn capture_streams(&self) -> (Arc<CudaStream>, Arc<CudaStream>) {
        let a = lock(&self.inner.swap).current().clone();
        (
            a.prepared.partition.encoder_capture_stream.clone(),
            a.prepared.partition.decoder_capture_stream.clone(),
        )
    }

    /// Captures the graph of (`stage`, `slot`) on `p`'s stream for the slot's current shape,
    /// under the stage's lock (no frame of that stage is being enqueued meanwhile).
    fn capture_one(&self, p: &PreparedSplit, stage: Stage, slot: usize) -> Result<bool> {
        let inner = &self.inner;
        // Captures run on the partition's capture streams (same SMs, never the hot path's
        // streams) and only record, so they do not take the stage's lock: the hot path keeps
        // its turn (std mutexes are unfair: waiting for a busy decoder lock starved captures
        // for seconds under load). Captures are serialised among themselves.
        let _l = lock(&inner.capture_lock);
        let shape = match stage {
            Stage::Encoder => inner.engine.encoder_shape(slot),
            Stage::Decoder => inner.engine.decoder_shape(slot),
        };
        let Some(k) = shape else { return Ok(false) };
        if matches!(lock(p.graphs(stage)).get(slot), Some(Some((gk, _))) if *gk == k) {
            return Ok(false);
        }
        let t0 = Instant::now();
        let _r = Range::new("capture");
        let g = match stage {
            Stage::Encoder => inner
                .engine
                .capture_encoder(&p.partition.encoder_capture_stream, slot)?,
            Stage::Decoder => inner
                .engine
                .capture_decoder(&p.partition.decoder_capture_stream, slot)?,
        };
        if upload_where() == GraphUpload::Launch {
            g.upload_on(p.stream(stage))?;
        }
        lock(&inner.capture_ms).push(t0.elapsed().as_secs_f64() * 1e3);
        lock(p.graphs(stage))[slot] = Some((k, g));
        Ok(true)
    }

    /// Asks the capture thread for a graph of (`stage`, `slot`) at the current shape.
    pub(super) fn request_capture(
        &self,
        p: &Arc<PreparedSplit>,
        stage: Stage,
        slot: usize,
        shape: u64,
    ) {
        {
            let mut r = lock(&p.requested);
            if r.contains(&(stage, slot, shape)) {
                return;
            }
            r.push((stage, slot, shape));
        }
        if self.ensure_capturer().is_err() {
            return;
        }
        lock(&self.inner.captures).push_back(CaptureJob {
            prepared: Arc::downgrade(p),
            stage,
            slot,
            _e: std::marker::PhantomData,
        });
        self.inner.captures_cv.notify_all();
    }

    fn ensure_capturer(&self) -> Result<()> {
        self.ensure_thread(&self.capturer, "pi0-graph-capture", Self::capture_loop)
    }

    /// The capture thread: captures queued (stage, slot) graphs off the hot path.
    fn capture_loop(&self) {
        nvtx::name_thread!("pi0-graph-capture");
        loop {
            let job = {
                let mut q = lock(&self.inner.captures);
                loop {
                    if self.inner.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(j) = q.pop_front() {
                        break j;
                    }
                    q = self
                        .inner
                        .captures_cv
                        .wait_timeout(q, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            if let Some(p) = job.prepared.upgrade() {
                if let Err(e) = self.capture_one(&p, job.stage, job.slot) {
                    log::warn!("graph capture {:?} slot {}: {e}", job.stage, job.slot);
                }
            }
        }
    }

    /// Host times of the graph captures so far (ms).
    pub fn capture_times(&self) -> Vec<f64> {
        lock(&self.inner.capture_ms).clone()
    }
}

/// Takes every graph of both stages out of `p` (encoder's, then decoder's, by slot), so the
/// caller decides when they are destroyed.
fn take_graphs(p: &PreparedSplit) -> [Vec<Option<(u64, StageGraph)>>; 2] {
    let take = |stage| lock(p.graphs(stage)).iter_mut().map(Option::take).collect();
    [take(Stage::Encoder), take(Stage::Decoder)]
}
