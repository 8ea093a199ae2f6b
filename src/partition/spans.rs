//! Stage spans: GPU timestamps around each stage's launch, a study tool for the lockstep
//! frame. The frame's period is set by the two stages' GPU time under load and by the gaps
//! the host leaves between one stage's end and its next start; these timestamps tell which.
//! Off unless a caller turns it on (`PartitionedPi0::record_stage_spans`): each recorded
//! launch costs two timing events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaEvent, CudaStream};

use super::runtime_kernels::gpu;
use super::swap::Stage;
use crate::error::Result;

/// One stage launch on the GPU's clock, in ms from the first recorded start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageSpan {
    pub stage: Stage,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// Records timing events around stage launches while it is on.
#[derive(Default)]
pub struct SpanRecorder {
    on: AtomicBool,
    events: Mutex<Vec<(Stage, CudaEvent, CudaEvent)>>,
}

impl SpanRecorder {
    /// Turns recording on or off; either way, what was recorded so far is dropped.
    pub fn set(&self, on: bool) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.on.store(on, Ordering::Relaxed);
    }

    /// Runs `launch` (which enqueues one stage on `stream`) between two timing events when on.
    pub fn around(
        &self,
        stream: &Arc<CudaStream>,
        stage: Stage,
        launch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return launch();
        }
        let timed = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream.record_event(timed).map_err(gpu("span start"))?;
        launch()?;
        let end = stream.record_event(timed).map_err(gpu("span end"))?;
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        ev.push((stage, start, end));
        Ok(())
    }

    /// Waits for every recorded span and returns them in launch order, on the clock of the
    /// first span's start; clears the record.
    pub fn take(&self) -> Result<Vec<StageSpan>> {
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        let Some((_, origin, _)) = events.first() else {
            return Ok(Vec::new());
        };
        let ms = |e: &CudaEvent| -> Result<f64> {
            Ok(origin.elapsed_ms(e).map_err(gpu("span elapsed"))? as f64)
        };
        events
            .iter()
            .map(|(stage, s, e)| {
                Ok(StageSpan {
                    stage: *stage,
                    start_ms: ms(s)?,
                    end_ms: ms(e)?,
                })
            })
            .collect()
    }
}

/// One launch of a stage as a frame trace reports it: its start and GPU time, and the gap from
/// the stage's previous end (None for the first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageFrame {
    pub start_ms: f64,
    pub gpu_ms: f64,
    pub gap_ms: Option<f64>,
}

/// The frames of one stage from its spans, in order.
pub fn stage_times(spans: &[StageSpan], stage: Stage) -> Vec<StageFrame> {
    let mine: Vec<&StageSpan> = spans.iter().filter(|s| s.stage == stage).collect();
    mine.iter()
        .enumerate()
        .map(|(i, s)| StageFrame {
            start_ms: s.start_ms,
            gpu_ms: s.end_ms - s.start_ms,
            gap_ms: i.checked_sub(1).map(|j| s.start_ms - mine[j].end_ms),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(stage: Stage, start_ms: f64, end_ms: f64) -> StageSpan {
        StageSpan {
            stage,
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn stage_times_take_each_stage_in_order_with_gaps_from_its_own_previous_end() {
        let spans = [
            span(Stage::Decoder, 0.0, 10.0),
            span(Stage::Encoder, 0.1, 10.3),
            span(Stage::Decoder, 10.4, 20.5),
            span(Stage::Encoder, 10.6, 20.6),
        ];
        let d = stage_times(&spans, Stage::Decoder);
        let e = stage_times(&spans, Stage::Encoder);
        assert_eq!(d.len(), 2);
        assert!((d[0].gpu_ms - 10.0).abs() < 1e-12 && d[0].gap_ms.is_none());
        assert!((d[1].gpu_ms - 10.1).abs() < 1e-12 && (d[1].gap_ms.unwrap() - 0.4).abs() < 1e-12);
        assert!((e[1].gpu_ms - 10.0).abs() < 1e-12 && (e[1].gap_ms.unwrap() - 0.3).abs() < 1e-12);
        assert_eq!((d[1].start_ms, e[1].start_ms), (10.4, 10.6));
    }
}
