//! The ROS 2 node `/pi0` on r2r: glue only. Everything it decides is in [`crate::pipeline`].
//!
//! - In: `camera_topics` (`sensor_msgs/Image`, sensor-data QoS), `joint_states_topic`
//!   (`sensor_msgs/JointState`, sensor-data QoS). Frames are pre-processed when they arrive
//!   (which validates them); bad messages are logged (rate-limited) and skipped.
//! - Out: `actions_topic` (`trajectory_msgs/JointTrajectory`, reliable, depth 10), stamped with
//!   the observation's time, point k at `(k + 1) / control_rate_hz`; `diagnostics`
//!   (`diagnostic_msgs/DiagnosticArray`) with the timing of every inference;
//!   `/parameter_events` (r2r does not publish it by itself).
//! - Parameters: all of [`crate::pipeline::settings::PARAMS`] through r2r's parameter services
//!   (so `ros2 param get/set/list/describe` work); refusals carry our reason.
//! - Threads: the rcl spin loop on its own thread; tokio tasks for I/O; inference on the
//!   scheduler's two worker threads.
//! - SIGINT / SIGTERM: stop taking input, finish (or after 5 s drop) in-flight work, release
//!   the model, exit 0.

pub mod params;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use r2r::builtin_interfaces::msg::{Duration as RosDuration, Time};
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::rcl_interfaces::msg::{Parameter as ParameterMsg, ParameterEvent};
use r2r::sensor_msgs::msg::{Image, JointState};
use r2r::std_msgs::msg::Header;
use r2r::trajectory_msgs::msg::{JointTrajectory, JointTrajectoryPoint};
use r2r::QosProfile;
use tokio::signal::unix::{signal, SignalKind};

use crate::model::preprocess::RawImage;
use crate::pipeline::runner::ActionChunk;
use crate::pipeline::scheduler::{self, Input, Output};
use crate::pipeline::settings::{NodeSettings, ParamValue, PARAMS};
use crate::pipeline::sync::{JointSample, Stamp};
use crate::pipeline::PolicyRunner;

/// Entry point of the `pi0` executable: 0 after an orderly shutdown, 1 on a start-up failure,
/// 2 on invalid parameters.
pub fn run_node() -> i32 {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(node_main());
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn stamp_ns(t: &Time) -> Stamp {
    t.sec as i64 * 1_000_000_000 + t.nanosec as i64
}

fn to_time(ns: Stamp) -> Time {
    Time {
        sec: ns.div_euclid(1_000_000_000) as i32,
        nanosec: ns.rem_euclid(1_000_000_000) as u32,
    }
}

fn to_duration(ns: i64) -> RosDuration {
    RosDuration {
        sec: ns.div_euclid(1_000_000_000) as i32,
        nanosec: ns.rem_euclid(1_000_000_000) as u32,
    }
}

/// Logs a warning per source at most every 5 s, with the count of the ones suppressed.
#[derive(Default)]
struct WarnLimiter {
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl WarnLimiter {
    fn warn(&self, source: &str, msg: &str) {
        let mut m = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match m.get_mut(source) {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(5) => *n += 1,
            Some((t, n)) => {
                log::warn!("{source}: {msg} (and {n} more since the last report)");
                *t = now;
                *n = 0;
            }
            None => {
                log::warn!("{source}: {msg}");
                m.insert(source.to_string(), (now, 0));
            }
        }
    }
}

/// The trajectory message of a chunk.
pub fn trajectory_msg(c: &ActionChunk) -> JointTrajectory {
    JointTrajectory {
        header: Header {
            stamp: to_time(c.stamp),
            frame_id: String::new(),
        },
        joint_names: c.joint_names.clone(),
        points: c
            .points
            .iter()
            .enumerate()
            .map(|(k, p)| JointTrajectoryPoint {
                positions: p.clone(),
                time_from_start: to_duration(c.point_time_ns(k)),
                ..Default::default()
            })
            .collect(),
    }
}

/// A `/parameter_events` message saying that `changed` changed.
fn changed_event(stamp: Stamp, node: &str, changed: &[(&str, ParamValue)]) -> ParameterEvent {
    ParameterEvent {
        stamp: to_time(stamp),
        node: node.into(),
        changed_parameters: changed
            .iter()
            .map(|(name, v)| ParameterMsg {
                name: (*name).into(),
                value: params::to_msg(v),
            })
            .collect(),
        ..Default::default()
    }
}

/// One status as a `/diagnostics` message.
fn diagnostics(stamp: Stamp, status: DiagnosticStatus) -> DiagnosticArray {
    DiagnosticArray {
        header: Header {
            stamp: to_time(stamp),
            frame_id: String::new(),
        },
        status: vec![status],
    }
}

fn kv(key: &str, value: impl ToString) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.to_string(),
    }
}

fn node_main_error(e: impl std::fmt::Display) -> i32 {
    log::error!("{e}");
    1
}

async fn node_main() -> i32 {
    // Signals first: a SIGINT while the model loads is an orderly exit too.
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return node_main_error("cannot install the SIGINT/SIGTERM handlers"),
    };
    let ctx = match r2r::Context::create() {
        Ok(c) => c,
        Err(e) => return node_main_error(format!("rcl init failed: {e}")),
    };
    let node = match r2r::Node::create(ctx, "pi0", "") {
        Ok(n) => n,
        Err(e) => return node_main_error(format!("cannot create the node: {e}")),
    };
    let fq_name = node
        .fully_qualified_name()
        .unwrap_or_else(|_| "/pi0".into());
    let settings = {
        let p = node.params.lock().unwrap_or_else(|e| e.into_inner());
        params::settings_from_overrides(&p)
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            log::error!("invalid parameter: {e}");
            return 2;
        }
    };

    log::info!(
        "{fq_name}: loading the model (backend {})",
        settings.backend.as_str()
    );
    let load = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || PolicyRunner::from_settings(&s))
    };
    let runner = tokio::select! {
        r = load => match r {
            Ok(Ok(r)) => Arc::new(r),
            Ok(Err(e)) => return node_main_error(format!("cannot load the model: {e}")),
            Err(e) => return node_main_error(format!("model loading panicked: {e}")),
        },
        _ = sigint.recv() => { log::info!("SIGINT while loading: exiting"); return 0; }
        _ = sigterm.recv() => { log::info!("SIGTERM while loading: exiting"); return 0; }
    };
    let info = runner.info().clone();
    log::info!(
        "model {} ({}), engine {}, tokenizer: {}, normalization: {}, chunk {} x {} joints",
        info.checkpoint.display(),
        if info.random_weights {
            "RANDOM WEIGHTS"
        } else {
            "checkpoint"
        },
        info.engine,
        info.tokenizer,
        info.normalization,
        runner.chunk(),
        settings.action_joints.len()
    );

    match setup_and_run(node, runner, settings, &fq_name, &mut sigint, &mut sigterm).await {
        Ok(()) => {
            log::info!("{fq_name}: shut down");
            0
        }
        Err(e) => node_main_error(e),
    }
}

async fn setup_and_run(
    mut node: r2r::Node,
    runner: Arc<PolicyRunner>,
    settings: NodeSettings,
    fq_name: &str,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), String> {
    let err = |what: &str, e: r2r::Error| format!("{what}: {e}");
    let (bridge, mut settings_rx) = params::ParamBridge::new(settings.clone());
    let bridge = Arc::new(Mutex::new(bridge));
    let (param_handler, mut param_changes) = node
        .make_derived_parameter_handler(bridge.clone())
        .map_err(|e| err("parameter services", e))?;
    let actions_pub = node
        .create_publisher::<JointTrajectory>(&settings.actions_topic, QosProfile::default())
        .map_err(|e| err("actions publisher", e))?;
    let diag_pub = node
        .create_publisher::<DiagnosticArray>("diagnostics", QosProfile::default())
        .map_err(|e| err("diagnostics publisher", e))?;
    let events_pub = node
        .create_publisher::<ParameterEvent>("/parameter_events", QosProfile::parameter_events())
        .map_err(|e| err("/parameter_events publisher", e))?;
    let split_events_pub = events_pub.clone();
    let mut cameras = Vec::new();
    for topic in &settings.camera_topics {
        cameras.push(
            node.subscribe::<Image>(topic, QosProfile::sensor_data())
                .map_err(|e| err(&format!("subscription {topic}"), e))?,
        );
    }
    let joints_sub = node
        .subscribe::<JointState>(&settings.joint_states_topic, QosProfile::sensor_data())
        .map_err(|e| err("joint states subscription", e))?;
    let clock = node.get_ros_clock();
    let now = move || -> Stamp {
        clock
            .lock()
            .ok()
            .and_then(|mut c| c.get_now().ok())
            .map(|d| d.as_nanos() as Stamp)
            .unwrap_or(0)
    };

    // Parameter events: everything declared, once, then every accepted change.
    {
        let declared = PARAMS
            .iter()
            .map(|p| ParameterMsg {
                name: p.name.into(),
                value: params::to_msg(&settings.get(p.name).expect("getter")),
            })
            .collect();
        let _ = events_pub.publish(&ParameterEvent {
            stamp: to_time(now()),
            node: fq_name.into(),
            new_parameters: declared,
            ..Default::default()
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let warn = Arc::new(WarnLimiter::default());
    let (in_tx, mut out_rx, sched_task) =
        scheduler::spawn(runner.clone(), settings.clone(), now.clone());

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(param_handler));
    {
        let now = now.clone();
        let fq = fq_name.to_string();
        tasks.push(tokio::spawn(async move {
            while let Some((name, value)) = param_changes.next().await {
                let Some(value) = params::from_r2r(&value) else {
                    continue;
                };
                let ev = changed_event(now(), &fq, &[(&name, value)]);
                if let Err(e) = events_pub.publish(&ev) {
                    log::warn!("cannot publish /parameter_events: {e}");
                }
            }
        }));
    }
    let live = Arc::new(Mutex::new(settings.clone()));
    {
        let (tx, live) = (in_tx.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            while settings_rx.changed().await.is_ok() {
                let s = settings_rx.borrow_and_update().clone();
                if let Ok(mut l) = live.lock() {
                    *l = s.clone();
                }
                if tx.send(Input::Settings(Box::new(s))).await.is_err() {
                    break;
                }
            }
        }));
    }
    for (i, mut sub) in cameras.into_iter().enumerate() {
        let (tx, runner, stop, warn) = (in_tx.clone(), runner.clone(), stop.clone(), warn.clone());
        let topic = settings.camera_topics[i].clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let stamp = stamp_ns(&msg.header.stamp);
                let r = runner.clone();
                let prepared = tokio::task::spawn_blocking(move || {
                    r.prepare_image(&RawImage {
                        width: msg.width as usize,
                        height: msg.height as usize,
                        encoding: &msg.encoding,
                        step: msg.step as usize,
                        data: &msg.data,
                    })
                })
                .await;
                match prepared {
                    Ok(Ok(image)) => {
                        let ev = Input::Frame {
                            camera: i,
                            stamp,
                            image: Arc::new(image),
                        };
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        warn.warn(&format!("camera {topic}"), &format!("frame skipped: {e}"))
                    }
                    Err(e) => warn.warn(&format!("camera {topic}"), &format!("frame skipped: {e}")),
                }
            }
        }));
    }
    {
        let (tx, runner, stop, warn) = (in_tx.clone(), runner.clone(), stop.clone(), warn.clone());
        let mut sub = joints_sub;
        let topic = settings.joint_states_topic.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match runner.joint_map().extract(&msg.name, &msg.position) {
                    Ok(positions) => {
                        let ev = Input::Joints(JointSample {
                            stamp: stamp_ns(&msg.header.stamp),
                            positions,
                        });
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => warn.warn(
                        &format!("joint states {topic}"),
                        &format!("message skipped: {e}"),
                    ),
                }
            }
        }));
    }
    let publisher_task = {
        let now = now.clone();
        let info = runner.info().clone();
        let live = live.clone();
        let fq = fq_name.to_string();
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                match o {
                    Output::Chunk(c) => {
                        if let Err(e) = actions_pub.publish(&trajectory_msg(&c)) {
                            log::warn!("cannot publish the action chunk: {e}");
                        }
                        let latency_ms = (now() - c.stamp) as f64 / 1e6;
                        let s = live.lock().map(|s| s.clone()).unwrap_or_default();
                        let status = DiagnosticStatus {
                            level: 0,
                            name: "pi0: inference".into(),
                            message: format!("chunk {}", c.index),
                            hardware_id: info.engine.clone(),
                            values: vec![
                                kv("index", c.index),
                                kv("noise_seed", c.seed),
                                kv("encoder_ms", format!("{:.3}", c.timing.encoder_ms)),
                                kv("decoder_ms", format!("{:.3}", c.timing.decoder_ms)),
                                kv("end_to_end_ms", format!("{:.3}", c.timing.end_to_end_ms)),
                                kv("latency_ms", format!("{latency_ms:.3}")),
                                kv("stamp_ns", c.stamp),
                                kv("image_stamp_ns", c.image_stamp),
                                kv("masked_slots", format!("{:?}", c.masked_slots)),
                                kv("concurrent", s.concurrent),
                                kv("encoder_pct", s.encoder_pct),
                                kv("decoder_pct", s.decoder_pct),
                                kv("prompt", &s.prompt),
                                kv("random_weights", info.random_weights),
                            ],
                        };
                        let _ = diag_pub.publish(&diagnostics(c.stamp, status));
                    }
                    Output::SplitRefused {
                        requested,
                        restored,
                        reason,
                    } => {
                        let message = format!(
                            "SM split {requested} not applied ({reason}); the GPU stays on {restored}"
                        );
                        log::error!("{message}");
                        let put_back = bridge
                            .lock()
                            .map(|mut b| b.restore_split(requested, restored))
                            .unwrap_or(false);
                        if put_back {
                            // The restored parameters also reach `live` and the scheduler
                            // through the settings watch (restore_split sends them).
                            let ev = changed_event(
                                now(),
                                &fq,
                                &[
                                    (
                                        "encoder_pct",
                                        ParamValue::Integer(restored.encoder_pct.into()),
                                    ),
                                    (
                                        "decoder_pct",
                                        ParamValue::Integer(restored.decoder_pct.into()),
                                    ),
                                    ("concurrent", ParamValue::Bool(restored.concurrent)),
                                ],
                            );
                            if let Err(e) = split_events_pub.publish(&ev) {
                                log::warn!("cannot publish /parameter_events: {e}");
                            }
                        }
                        let status = DiagnosticStatus {
                            level: 2,
                            name: "pi0: SM partition".into(),
                            message,
                            hardware_id: info.engine.clone(),
                            values: vec![
                                kv("encoder_pct", restored.encoder_pct),
                                kv("decoder_pct", restored.decoder_pct),
                                kv("concurrent", restored.concurrent),
                            ],
                        };
                        let _ = diag_pub.publish(&diagnostics(now(), status));
                    }
                    Output::Failed { index, error } => {
                        log::warn!("inference {index:?} failed: {error}");
                        let status = DiagnosticStatus {
                            level: 1,
                            name: "pi0: inference".into(),
                            message: error,
                            hardware_id: info.engine.clone(),
                            values: vec![kv("index", format!("{index:?}"))],
                        };
                        let _ = diag_pub.publish(&diagnostics(now(), status));
                    }
                }
            }
        })
    };

    // The rcl spin loop, on its own thread (rcl calls block); the Node lock is held only
    // while spinning.
    let node = Arc::new(Mutex::new(node));
    let spin_stop = Arc::new(AtomicBool::new(false));
    let spin = {
        let (node, ss) = (node.clone(), spin_stop.clone());
        std::thread::Builder::new()
            .name("rcl-spin".into())
            .spawn(move || {
                while !ss.load(Ordering::Relaxed) {
                    if let Ok(mut n) = node.lock() {
                        n.spin_once(Duration::from_millis(10));
                    }
                }
            })
            .map_err(|e| format!("cannot start the spin thread: {e}"))?
    };
    log::info!("{fq_name}: ready");
    let which = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    log::info!("{which}: shutting down (no new input; finishing in-flight work)");
    stop.store(true, Ordering::Relaxed);
    let _ = in_tx.send(Input::Shutdown).await;
    drop(in_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), sched_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher_task).await;
    for t in &tasks {
        t.abort();
    }
    spin_stop.store(true, Ordering::Relaxed);
    let _ = spin.join();
    drop(node);
    drop(runner);
    Ok(())
}
