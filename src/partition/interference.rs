//! Interference study: why each stage runs slower beside the other than alone on the same SMs.
//!
//! SM partitions divide the SMs and nothing else: power, the L2, HBM and the launch path stay
//! shared. One stage (the victim) runs on its partition while an aggressor that loads one of
//! those resources runs flat out on the other partition (kernels/partition/aggressor.cu); the
//! victim's slowdown against running alone says how much of the real pairing's slowdown that
//! resource explains. `pi0-bench-partition --interference` prints the table.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{sys, CudaContext, CudaStream};

use super::bench::{streaming_under_load, Summary, Workload};
use super::pipeline::PartitionedPi0;
use super::runtime_kernels::{self, gpu, RuntimeLibrary, AGGRESSOR};
use super::stage::StageEngine;
use super::synthetic::DevBuf;
use crate::error::{Error, Result};

/// A long-running aggressor stops itself after this long even if the stop flag never comes.
const MAX_AGGRESSOR_NS: u64 = 20_000_000_000;

/// What the aggressor partition runs while the victim is timed.
#[derive(Clone, Debug)]
pub enum Load {
    /// Nothing: the victim alone on its partition.
    Idle,
    /// FMA chains only (power and clocks).
    Spin,
    /// Reads of a buffer of `bytes`, `blocks_per_sm` blocks of `threads` per SM: larger than
    /// the L2 it loads HBM, smaller only the L2.
    Read {
        bytes: usize,
        blocks_per_sm: u32,
        threads: u32,
    },
    /// Empty kernels of one block per SM, launched back to back from a host thread.
    Launches,
    /// The other stage itself, streaming (the pairing being explained).
    OtherStage,
}

impl Load {
    fn label(&self) -> String {
        match self {
            Load::Idle => "alone".into(),
            Load::Spin => "FMA spin".into(),
            Load::Read {
                bytes,
                blocks_per_sm,
                threads,
            } => format!(
                "reads of {} MiB, {blocks_per_sm} × {threads} threads per SM",
                bytes >> 20
            ),
            Load::Launches => "empty kernels back to back".into(),
            Load::OtherStage => "the other stage, streaming".into(),
        }
    }

    /// The loads of the study, lightest first.
    pub fn all() -> Vec<Load> {
        let read = |mib: usize, blocks_per_sm, threads| Load::Read {
            bytes: mib << 20,
            blocks_per_sm,
            threads,
        };
        vec![
            Load::Idle,
            Load::Spin,
            Load::Launches,
            read(16, 2, 512),
            read(2048, 1, 128),
            read(2048, 1, 512),
            read(2048, 2, 1024),
            Load::OtherStage,
        ]
    }
}

/// Which stage is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    Encoder,
    Decoder,
}

/// One measurement: the victim's latency under one load.
#[derive(Clone, Debug)]
pub struct Row {
    pub victim: Victim,
    pub load: String,
    pub victim_ms: Summary,
    /// What the aggressor achieved meanwhile: GB/s read, or launches per ms.
    pub aggressor: Option<String>,
}

/// The aggressor kernels (kernels/partition/aggressor.cu).
pub struct Aggressors {
    ctx: Arc<CudaContext>,
    spin: sys::CUkernel,
    read: sys::CUkernel,
    fill: sys::CUkernel,
    empty: sys::CUkernel,
    // Last: the kernels above belong to it.
    _lib: RuntimeLibrary,
}

// SAFETY: kernel handles are plain driver handles, valid in every thread once loaded.
unsafe impl Send for Aggressors {}
unsafe impl Sync for Aggressors {}

impl Aggressors {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        let lib = RuntimeLibrary::compile(ctx, &AGGRESSOR)?;
        Ok(Aggressors {
            ctx: ctx.clone(),
            spin: lib.kernel("agg_spin")?,
            read: lib.kernel("agg_read")?,
            fill: lib.kernel("agg_fill")?,
            empty: lib.kernel("agg_empty")?,
            _lib: lib,
        })
    }
}

/// Times `victim` `n` times on the current split under each of `loads`, the aggressor on the
/// other stage's partition. The pipeline must be concurrent on a split (green or MPS).
pub fn study<E: StageEngine + 'static>(
    p: &PartitionedPi0<E>,
    work: &Workload,
    agg: &Aggressors,
    victim: Victim,
    loads: &[Load],
    n: usize,
) -> Result<Vec<Row>> {
    let info = p.partition();
    if !info.concurrent || info.shared_sms > 0 {
        return Err(Error::Gpu(
            "interference study: needs a concurrent split without shared SMs".into(),
        ));
    }
    let (enc, dec) = p.streams();
    let (victim_stream, agg_stream, agg_sms) = match victim {
        Victim::Encoder => (enc, dec, info.decoder_sms),
        Victim::Decoder => (dec, enc, info.encoder_sms),
    };
    // A prefix for the decoder to read, and both stages warm.
    p.encode(work.input(0))?;
    p.synchronize()?;
    let time_victim = || -> Result<Summary> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(match victim {
                Victim::Decoder => {
                    p.request_actions(&work.input(i).state, work.noise(i))?
                        .latency_ms
                }
                Victim::Encoder => {
                    let t0 = Instant::now();
                    p.encode(work.input(i))?;
                    t0.elapsed().as_secs_f64() * 1e3
                }
            });
        }
        Ok(Summary::of(&v))
    };
    time_victim()?;
    let side = AggressorSide {
        agg,
        stream: agg_stream,
        victim_stream,
        sms: agg_sms,
        stop: DevBuf::new(&agg.ctx, 4)?,
        counter: DevBuf::new(&agg.ctx, 8)?,
        sink: DevBuf::new(&agg.ctx, 4)?,
    };
    let mut rows = Vec::new();
    for load in loads {
        let (victim_ms, aggressor) = match load {
            Load::Idle => (time_victim()?, None),
            Load::OtherStage => {
                let (dec_loaded, enc_period) = streaming_under_load(p, work, n)?;
                match victim {
                    Victim::Decoder => (dec_loaded, None),
                    // The encoder's period while decoders run back to back: one number.
                    Victim::Encoder => (Summary::of(&[enc_period]), None),
                }
            }
            Load::Launches => side.beside_launches(&time_victim)?,
            Load::Spin | Load::Read { .. } => side.beside_kernel(load, &time_victim)?,
        };
        rows.push(Row {
            victim,
            load: load.label(),
            victim_ms,
            aggressor,
        });
    }
    Ok(rows)
}

/// The aggressor's half of the split: its stream and SM count, the victim's stream (which
/// stops the aggressor), and the aggressor kernels' flag, byte counter and sink.
struct AggressorSide<'a> {
    agg: &'a Aggressors,
    stream: Arc<CudaStream>,
    victim_stream: Arc<CudaStream>,
    sms: u32,
    stop: DevBuf,
    counter: DevBuf,
    sink: DevBuf,
}

/// What the victim measured and what the aggressor achieved meanwhile.
type Outcome = (Summary, Option<String>);

impl AggressorSide<'_> {
    /// The victim timed while a host thread launches empty kernels back to back.
    fn beside_launches(&self, time_victim: &dyn Fn() -> Result<Summary>) -> Result<Outcome> {
        let (agg, stream) = (self.agg, &self.stream);
        let running = AtomicBool::new(true);
        let launches = AtomicU64::new(0);
        let t0 = Instant::now();
        let timed = std::thread::scope(|s| {
            let launcher = s.spawn(|| -> Result<()> {
                while running.load(Ordering::Relaxed) {
                    // SAFETY: agg_empty takes no parameters.
                    unsafe { runtime_kernels::launch(agg.empty, stream, self.sms, 128, &mut [])? };
                    launches.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
            std::thread::sleep(Duration::from_millis(5));
            let r = time_victim();
            running.store(false, Ordering::Relaxed);
            let l = launcher
                .join()
                .map_err(|_| Error::Gpu("launcher thread panicked".into()));
            r.and_then(|r| l.and_then(|l| l.map(|_| r)))
        })?;
        stream.synchronize().map_err(gpu("sync aggressor"))?;
        let per_ms = launches.load(Ordering::Relaxed) as f64 / (t0.elapsed().as_secs_f64() * 1e3);
        Ok((timed, Some(format!("{per_ms:.0} launches/ms"))))
    }

    /// The victim timed while a long-running aggressor kernel (`Spin` or `Read`) runs; the
    /// victim's stream raises the stop flag when it is done.
    fn beside_kernel(
        &self,
        load: &Load,
        time_victim: &dyn Fn() -> Result<Summary>,
    ) -> Result<Outcome> {
        let (agg, stream) = (self.agg, &self.stream);
        self.stop.fill_u32(stream, 0, 1)?;
        self.counter.fill_u32(stream, 0, 2)?;
        let buf = match load {
            Load::Read { bytes, .. } => Some(self.filled_buffer(*bytes)?),
            _ => None,
        };
        stream.synchronize().map_err(gpu("sync aggressor"))?;
        let mut stop_ptr = self.stop.ptr;
        let mut max_ns = MAX_AGGRESSOR_NS;
        let mut sink_ptr = self.sink.ptr;
        let t0 = Instant::now();
        match (load, &buf) {
            (
                Load::Read {
                    blocks_per_sm,
                    threads,
                    ..
                },
                Some(b),
            ) => {
                let mut buf_ptr = b.ptr;
                let mut n4 = (b.bytes / 16) as i64;
                let mut count_ptr = self.counter.ptr;
                // SAFETY: the parameters match agg_read's list.
                unsafe {
                    runtime_kernels::launch(
                        agg.read,
                        stream,
                        self.sms * blocks_per_sm,
                        *threads,
                        &mut [
                            &mut stop_ptr as *mut _ as *mut c_void,
                            &mut max_ns as *mut _ as *mut c_void,
                            &mut buf_ptr as *mut _ as *mut c_void,
                            &mut n4 as *mut _ as *mut c_void,
                            &mut count_ptr as *mut _ as *mut c_void,
                            &mut sink_ptr as *mut _ as *mut c_void,
                        ],
                    )?
                }
            }
            // SAFETY: the parameters match agg_spin's list.
            _ => unsafe {
                runtime_kernels::launch(
                    agg.spin,
                    stream,
                    self.sms * 2,
                    512,
                    &mut [
                        &mut stop_ptr as *mut _ as *mut c_void,
                        &mut max_ns as *mut _ as *mut c_void,
                        &mut sink_ptr as *mut _ as *mut c_void,
                    ],
                )?
            },
        }
        std::thread::sleep(Duration::from_millis(5));
        let timed = time_victim();
        // The flag is written from the victim's stream: the aggressor's own is busy.
        let stopped = self
            .stop
            .fill_u32(&self.victim_stream, 1, 1)
            .and_then(|_| self.victim_stream.synchronize().map_err(gpu("sync victim")));
        stream.synchronize().map_err(gpu("sync aggressor"))?;
        let secs = t0.elapsed().as_secs_f64();
        let timed = timed?;
        stopped?;
        let bytes: Vec<u64> = self.counter.download(stream, 1)?;
        let rate = buf
            .is_some()
            .then(|| format!("{:.0} GB/s", bytes[0] as f64 / secs / 1e9));
        Ok((timed, rate))
    }

    /// A buffer of `bytes` holding varied finite values: a constant fill could be compressed
    /// in memory and read at more than HBM's rate.
    fn filled_buffer(&self, bytes: usize) -> Result<DevBuf> {
        let b = DevBuf::new(&self.agg.ctx, bytes)?;
        let mut ptr = b.ptr;
        let mut n = (b.bytes / 4) as i64;
        let mut seed = 0x9e37_79b9u32;
        // SAFETY: the parameters match agg_fill's list.
        unsafe {
            runtime_kernels::launch(
                self.agg.fill,
                &self.stream,
                self.sms * 4,
                256,
                &mut [
                    &mut ptr as *mut _ as *mut c_void,
                    &mut n as *mut _ as *mut c_void,
                    &mut seed as *mut _ as *mut c_void,
                ],
            )?
        };
        Ok(b)
    }
}

/// The study's rows as a markdown table, each victim's slowdown against its `alone` row.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| victim | aggressor on the other partition | victim p50 / p99 ms | × alone | aggressor achieved |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let alone = rows
            .iter()
            .find(|a| a.victim == r.victim && a.load == Load::Idle.label())
            .map_or(f64::NAN, |a| a.victim_ms.p50);
        let _ = writeln!(
            s,
            "| {:?} | {} | {:.3} / {:.3} | {:.3} | {} |",
            r.victim,
            r.load,
            r.victim_ms.p50,
            r.victim_ms.p99,
            r.victim_ms.p50 / alone,
            r.aggressor.as_deref().unwrap_or("-")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(victim: Victim, load: Load, p50: f64, aggressor: Option<&str>) -> Row {
        Row {
            victim,
            load: load.label(),
            victim_ms: Summary {
                p50,
                p99: p50 + 0.5,
                mean: p50,
                n: 30,
            },
            aggressor: aggressor.map(String::from),
        }
    }

    #[test]
    fn the_table_divides_each_victim_by_its_own_alone_row() {
        let rows = [
            row(Victim::Decoder, Load::Idle, 9.0, None),
            row(Victim::Decoder, Load::Spin, 9.9, None),
            row(Victim::Encoder, Load::Idle, 8.0, None),
            row(
                Victim::Encoder,
                Load::Launches,
                10.0,
                Some("200 launches/ms"),
            ),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + rows.len(), "{t}");
        assert!(lines[3].contains("| 9.900 / 10.400 | 1.100 | - |"), "{t}");
        assert!(
            lines[5].contains("| 10.000 / 10.500 | 1.250 | 200 launches/ms |"),
            "{t}"
        );
    }

    #[test]
    fn without_an_alone_row_the_ratio_is_not_a_number() {
        let t = table(&[row(Victim::Decoder, Load::Spin, 9.9, None)]);
        assert!(t.contains("| NaN |"), "{t}");
    }

    #[test]
    fn the_study_covers_every_shared_resource_once() {
        let labels: Vec<String> = Load::all().iter().map(Load::label).collect();
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
        assert_eq!(labels.first().map(String::as_str), Some("alone"));
        assert!(
            labels.iter().any(|l| l.contains("16 MiB")),
            "an L2-resident read"
        );
        assert!(labels.iter().any(|l| l.contains("2048 MiB")), "an HBM read");
    }
}
