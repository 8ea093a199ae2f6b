//! The streaming API of `PartitionedPi0`: observations handed to an encoder thread on its
//! partition (`submit_observation`), action chunks on the newest complete prefix
//! (`request_actions`), so observations and action requests can come from separate loops.

use super::*;

impl<E: StageEngine + 'static> PartitionedPi0<E> {
    /// Hands a new observation to the encoder (which runs on its own thread, on its partition).
    /// Returns at once. If the encoder is busy, the observation waits; a newer one replaces it
    /// (counted in `stream_stats().dropped`).
    pub fn submit_observation(&self, input: ModelInput) -> Result<ObsId> {
        self.ensure_worker()?;
        let obs = self.inner.next_obs.fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&self.inner.pending);
        let mut st = lock(&self.inner.stats);
        st.submitted += 1;
        if p.obs.replace((obs, input)).is_some() {
            st.dropped += 1;
        }
        drop(st);
        drop(p);
        self.inner.pending_cv.notify_all();
        Ok(obs)
    }

    /// Runs the decoder on the newest complete prefix with this state and noise. Waits (up to
    /// `timeout`) for the first prefix if none is complete yet.
    pub fn request_actions(&self, state: &[f32], noise: &[f32]) -> Result<ActionChunk> {
        self.request_actions_timeout(state, noise, Duration::from_secs(10))
    }

    pub fn request_actions_timeout(
        &self,
        state: &[f32],
        noise: &[f32],
        timeout: Duration,
    ) -> Result<ActionChunk> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        // Sequential mode: the decoder and the encoder thread take turns. Taken before the
        // pin, so the encoder (which holds it while it waits for a slot) never waits on us.
        let concurrent = lock(&inner.swap).current().concurrent;
        let _seq = (!concurrent).then(|| lock(&inner.seq));
        let (slot, obs) = {
            let mut s = lock(&inner.slots);
            loop {
                s.refresh();
                if let Some((i, o)) = s.table.newest_ready() {
                    s.table.pins[i] += 1;
                    break (i, o);
                }
                if Instant::now() > deadline {
                    return Err(Error::Input(
                        "no encoded observation yet: call submit_observation first".into(),
                    ));
                }
                s = inner
                    .slots_cv
                    .wait_timeout(s, Duration::from_millis(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        self.run_decoder(slot, obs, state, noise)
    }

    /// The newest observation whose prefix is complete.
    pub fn newest_prefix(&self) -> Option<ObsId> {
        let mut s = lock(&self.inner.slots);
        s.refresh();
        s.table.newest_ready().map(|(_, o)| o)
    }

    fn ensure_worker(&self) -> Result<()> {
        self.ensure_thread(&self.worker, "pi0-encoder", Self::worker_loop)
    }

    fn worker_loop(&self) {
        let inner = &self.inner;
        nvtx::name_thread!("pi0-encoder");
        loop {
            let (obs, input) = {
                let mut p = lock(&inner.pending);
                loop {
                    if inner.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(x) = p.obs.take() {
                        break x;
                    }
                    p = inner
                        .pending_cv
                        .wait_timeout(p, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let concurrent = lock(&inner.swap).current().concurrent;
            let seq = (!concurrent).then(|| lock(&inner.seq));
            let r = self.run_encoder(obs, &input).and_then(|(slot, ev)| {
                ev.synchronize().map_err(gpu("encoder sync"))?;
                Ok(slot)
            });
            drop(seq);
            match r {
                Ok(slot) => {
                    let mut s = lock(&inner.slots);
                    s.table.states[slot] = SlotState::Ready(obs);
                    drop(s);
                    inner.slots_cv.notify_all();
                    lock(&inner.stats).encoded += 1;
                }
                Err(e) => {
                    log::error!("encoder of observation {obs}: {e}");
                    let mut st = lock(&inner.stats);
                    st.encoder_errors += 1;
                    st.last_error = Some(e.to_string());
                }
            }
        }
    }
}
