//! `pi0-replay`: rosbag2 tools for the pi0 node without ROS.
//!
//! - `info BAG`: storage, metadata version, topics with message counts (metadata and actual).
//! - `generate OUT`: a synthetic camera + joint-state bag (MCAP or sqlite3, metadata v9 or v5).
//! - `offline BAG -o OUT`: replays BAG through the node's pipeline (same sync, preprocessing and
//!   engine code, fixed noise seed) and writes the action chunks to the bag OUT.
//! - `play BAG`: publishes a bag into the ROS graph at the recorded pace, optionally recording
//!   the node's action chunks (needs the `ros` feature).
//! - `compare ACTUAL EXPECTED`: chunk-by-chunk comparison of two action bags.
//!
//! Exit codes: 0 success / comparison passed, 1 comparison failed, 2 error (message on stderr).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pi0_mps::bag::compare::{compare_bags, CompareOptions};
use pi0_mps::bag::generate::{generate_bag, GenerateOptions};
use pi0_mps::bag::replay::{load_params_file, parse_param_override, replay_offline, ReplayOptions};
use pi0_mps::bag::{Bag, Storage, WriterOptions};
use pi0_mps::pipeline::{NodeSettings, PolicyRunner};
use pi0_mps::{Error, Result};

#[derive(Parser)]
#[command(
    name = "pi0-replay",
    version,
    about = "rosbag2 replay, generation and comparison for the pi0 node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Storage of the written bag: mcap or sqlite3.
    #[arg(long, default_value = "mcap")]
    storage: Storage,
    /// metadata.yaml version to write: 9 (Jazzy) or 5 (Humble).
    #[arg(long = "metadata-version", default_value_t = 9)]
    metadata_version: u32,
    /// Don't zstd-compress MCAP chunks.
    #[arg(long)]
    no_compression: bool,
    /// Replace the output bag if it exists.
    #[arg(long)]
    overwrite: bool,
}

impl OutputArgs {
    fn writer(&self) -> WriterOptions {
        WriterOptions {
            storage: self.storage,
            version: self.metadata_version,
            mcap_compression: !self.no_compression,
            overwrite: self.overwrite,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a bag's storage, version and topics (message counts from metadata.yaml and as read).
    Info { bag: PathBuf },
    /// Write a synthetic camera + joint-state bag.
    Generate {
        /// Output bag folder.
        out: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
        /// Frames per camera.
        #[arg(long, default_value_t = 5)]
        frames: usize,
        /// Camera topics (sensor_msgs/Image), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "/camera/image_raw")]
        cameras: Vec<String>,
        #[arg(long, default_value_t = 32)]
        width: u32,
        #[arg(long, default_value_t = 24)]
        height: u32,
        /// rgb8, bgr8, rgba8, bgra8 or mono8.
        #[arg(long, default_value = "rgb8")]
        encoding: String,
        #[arg(long, default_value_t = 10.0)]
        camera_hz: f64,
        /// Camera i's frames come i × this many milliseconds after camera 0's.
        #[arg(long, default_value_t = 2.0)]
        camera_offset_ms: f64,
        #[arg(long, default_value = "/joint_states")]
        joint_topic: String,
        /// Joint names, comma separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "joint1,joint2,joint3,joint4,joint5,joint6,joint7"
        )]
        joints: Vec<String>,
        #[arg(long, default_value_t = 50.0)]
        joint_hz: f64,
        /// Time of the first frame, nanoseconds since the epoch.
        #[arg(long, default_value_t = 1_700_000_000_000_000_000)]
        start_ns: i64,
        /// Seed of the synthetic content.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Cameras as PNG sensor_msgs/CompressedImage instead of raw sensor_msgs/Image.
        #[arg(long)]
        png: bool,
    },
    /// Replay a bag through the node's pipeline (no ROS) and write the action chunks to a bag.
    Offline {
        /// Input bag (folder with metadata.yaml, or a .mcap / .db3 file).
        bag: PathBuf,
        /// Output action bag folder.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        out: OutputArgs,
        /// The node's parameters file (config/pi0.yaml format).
        #[arg(long)]
        params_file: Option<PathBuf>,
        /// A node parameter, `name:=value` (as `--ros-args -p`); after --params-file. Repeatable.
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// Shorthand for `-p checkpoint:=DIR`.
        #[arg(long)]
        checkpoint: Option<String>,
        /// Shorthand for `-p seed:=N` (noise of inference k is gaussian_noise(seed + k)).
        #[arg(long)]
        seed: Option<u64>,
        /// Read the node topic FROM (resolved, e.g. /camera/image_raw) from bag topic TO: FROM:=TO.
        #[arg(long = "remap")]
        remaps: Vec<String>,
        /// Node name and namespace used to resolve relative topic names.
        #[arg(long, default_value = "pi0")]
        node_name: String,
        #[arg(long, default_value = "/")]
        namespace: String,
        /// Skip (with a warning) messages the node would refuse instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// Stop after this many action chunks.
        #[arg(long)]
        max_chunks: Option<usize>,
    },
    /// Publish a bag into the ROS graph at the recorded pace (needs the `ros` feature) and
    /// optionally record the node's action chunks. Exit 1 when --expect / a lockstep step is
    /// not met.
    Play {
        bag: PathBuf,
        /// Speed factor (2 = twice as fast); 0 = as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Play the bag this many times.
        #[arg(long = "loop", default_value_t = 1)]
        loops: usize,
        /// Publish bag topic FROM as TO: FROM:=TO. Repeatable.
        #[arg(long = "remap")]
        remaps: Vec<String>,
        /// Only these bag topics (comma separated; default all).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Best-effort publishers (default reliable).
        #[arg(long)]
        best_effort: bool,
        /// Shift header stamps so that they are fresh at publish time.
        #[arg(long)]
        restamp: bool,
        /// Record this JointTrajectory topic...
        #[arg(long)]
        record: Option<String>,
        /// ... into this bag folder (MCAP, metadata v9).
        #[arg(long)]
        record_out: Option<PathBuf>,
        /// Wait until this many messages were recorded.
        #[arg(long)]
        expect: Option<usize>,
        /// Lockstep: after each message of this bag topic, wait for one recorded answer.
        #[arg(long)]
        step_topic: Option<String>,
        /// Seconds to wait for each answer / for --expect / for subscribers.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// Compare two action bags chunk by chunk; exit 1 when they differ.
    Compare {
        actual: PathBuf,
        expected: PathBuf,
        /// Absolute tolerance per action value.
        #[arg(long, default_value_t = 1e-5)]
        atol: f64,
        /// Relative tolerance per action value (× |expected|).
        #[arg(long, default_value_t = 1e-4)]
        rtol: f64,
        /// Action topic in ACTUAL (default: its only JointTrajectory topic).
        #[arg(long)]
        topic: Option<String>,
        /// Action topic in EXPECTED (default: its only JointTrajectory topic).
        #[arg(long)]
        expected_topic: Option<String>,
        /// Don't require equal observation stamps.
        #[arg(long)]
        ignore_stamps: bool,
    },
}

/// `--remap FROM:=TO` arguments as (from, to) topic pairs.
fn parse_remaps(remaps: &[String]) -> Result<Vec<(String, String)>> {
    remaps
        .iter()
        .map(|r| {
            r.split_once(":=")
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Bag(format!("--remap `{r}`: expected FROM:=TO")))
        })
        .collect()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pi0-replay: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Info { bag } => info(bag),
        Cmd::Generate {
            out,
            output,
            frames,
            cameras,
            width,
            height,
            encoding,
            camera_hz,
            camera_offset_ms,
            joint_topic,
            joints,
            joint_hz,
            start_ns,
            seed,
            png,
        } => {
            let opts = GenerateOptions {
                writer: output.writer(),
                camera_topics: cameras,
                width,
                height,
                encoding,
                frames,
                camera_hz,
                camera_offset_ns: (camera_offset_ms * 1e6).round() as i64,
                joint_topic,
                joints,
                joint_hz,
                start_ns,
                seed,
                png,
            };
            let m = generate_bag(&out, &opts)?;
            println!(
                "wrote {} ({} messages, {} topics, {} storage, metadata v{})",
                out.display(),
                m.message_count,
                m.topics.len(),
                m.storage_identifier,
                m.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Offline {
            bag,
            output,
            out,
            params_file,
            params,
            checkpoint,
            seed,
            remaps,
            node_name,
            namespace,
            skip_bad,
            max_chunks,
        } => {
            let mut overrides = Vec::new();
            if let Some(f) = &params_file {
                overrides.extend(load_params_file(f, &node_name)?);
            }
            for p in &params {
                overrides.push(parse_param_override(p)?);
            }
            if let Some(c) = checkpoint {
                overrides.push((
                    "checkpoint".into(),
                    pi0_mps::pipeline::ParamValue::String(c),
                ));
            }
            if let Some(s) = seed {
                let s = i64::try_from(s).map_err(|_| Error::Parameter {
                    name: "seed".into(),
                    reason: format!("{s} is too large"),
                })?;
                overrides.push(("seed".into(), pi0_mps::pipeline::ParamValue::Integer(s)));
            }
            let settings =
                NodeSettings::from_overrides(overrides.iter().map(|(n, v)| (n.as_str(), v)))?;
            let remaps = parse_remaps(&remaps)?;
            let bag = Bag::open(&bag)?;
            let runner = PolicyRunner::from_settings(&settings)?;
            let opts = ReplayOptions {
                node_name,
                namespace,
                remaps,
                output: output.clone(),
                writer: out.writer(),
                skip_bad,
                max_chunks,
            };
            let (s, _) = replay_offline(&bag, &runner, &settings, &opts)?;
            println!(
                "read {} frames ({}) and {} joint states ({}); wrote {} action chunks to {} ({}); \
                 {} with a masked view, {} messages skipped",
                s.frames,
                s.camera_topics.join(", "),
                s.joint_states,
                s.joint_topic,
                s.chunks,
                output.display(),
                s.actions_topic,
                s.masked,
                s.skipped.len()
            );
            for k in &s.skipped {
                println!("skipped: {k}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Play {
            bag,
            rate,
            loops,
            remaps,
            topics,
            best_effort,
            restamp,
            record,
            record_out,
            expect,
            step_topic,
            timeout,
        } => {
            let remaps = parse_remaps(&remaps)?;
            let record = match (record, record_out) {
                (Some(t), Some(o)) => Some((t, o)),
                (None, None) => None,
                _ => return Err(Error::Bag("--record and --record-out go together".into())),
            };
            if !(timeout > 0.0 && timeout.is_finite()) {
                return Err(Error::Bag("--timeout must be positive".into()));
            }
            let bag = Bag::open(&bag)?;
            play(
                bag,
                PlayArgs {
                    rate,
                    loops,
                    remaps,
                    topics,
                    best_effort,
                    restamp,
                    record,
                    expect,
                    step_topic,
                    timeout: std::time::Duration::from_secs_f64(timeout),
                },
            )
        }
        Cmd::Compare {
            actual,
            expected,
            atol,
            rtol,
            topic,
            expected_topic,
            ignore_stamps,
        } => {
            if !(atol >= 0.0 && rtol >= 0.0) {
                return Err(Error::Bag("--atol and --rtol must be >= 0".into()));
            }
            let opts = CompareOptions {
                topic,
                expected_topic,
                atol,
                rtol,
                check_stamps: !ignore_stamps,
            };
            let r = compare_bags(&actual, &expected, &opts)?;
            print!("{}", r.summary());
            Ok(if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg_attr(not(feature = "ros"), allow(dead_code))]
struct PlayArgs {
    rate: f64,
    loops: usize,
    remaps: Vec<(String, String)>,
    topics: Vec<String>,
    best_effort: bool,
    restamp: bool,
    record: Option<(String, PathBuf)>,
    expect: Option<usize>,
    step_topic: Option<String>,
    timeout: std::time::Duration,
}

#[cfg(feature = "ros")]
fn play(bag: Bag, a: PlayArgs) -> Result<ExitCode> {
    use pi0_mps::bag::online::{play, PlayOptions};
    let opts = PlayOptions {
        rate: a.rate,
        loops: a.loops,
        remaps: a.remaps,
        topics: a.topics,
        best_effort: a.best_effort,
        restamp: a.restamp,
        wait_subscribers: a.timeout.min(std::time::Duration::from_secs(60)),
        record: a.record.clone(),
        expect: a.expect,
        record_timeout: a.timeout,
        step_topic: a.step_topic,
        step_timeout: a.timeout,
        ..Default::default()
    };
    let s = play(&bag, &opts)?;
    print!(
        "published {} messages from {}",
        s.published,
        bag.path.display()
    );
    if let Some((t, o)) = &a.record {
        print!("; recorded {} on {t} into {}", s.recorded, o.display());
    }
    println!();
    let mut ok = s.step_timeouts == 0;
    if s.step_timeouts > 0 {
        eprintln!(
            "pi0-replay: {} lockstep messages got no answer",
            s.step_timeouts
        );
    }
    if let Some(n) = a.expect {
        if (s.recorded as usize) < n {
            eprintln!(
                "pi0-replay: expected {n} recorded messages, got {}",
                s.recorded
            );
            ok = false;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(not(feature = "ros"))]
fn play(_bag: Bag, _a: PlayArgs) -> Result<ExitCode> {
    Err(Error::Bag(
        "`play` needs ROS: this pi0-replay was built without the `ros` feature (build it with \
         `--features ros` in a sourced ROS 2 environment, see scripts/ros-env.sh), or use \
         tests/ros/bag_play.py (rclpy)"
            .into(),
    ))
}

fn info(path: PathBuf) -> Result<ExitCode> {
    let bag = Bag::open(&path)?;
    let counts = bag.count_messages()?;
    println!("bag:      {}", path.display());
    println!("storage:  {}", bag.storage.identifier());
    match &bag.metadata {
        Some(m) => {
            println!(
                "metadata: version {}{}",
                m.version,
                if m.ros_distro.is_empty() {
                    String::new()
                } else {
                    format!(", ros_distro {}", m.ros_distro)
                }
            );
            println!(
                "time:     start {} ns, duration {:.3} s, {} messages",
                m.starting_time_ns,
                m.duration_ns as f64 * 1e-9,
                m.message_count
            );
        }
        None => println!("metadata: none (single storage file)"),
    }
    for f in &bag.files {
        println!("file:     {}", f.display());
    }
    println!("topics:");
    for t in &bag.topics {
        let n = counts.get(&t.name).copied().unwrap_or(0);
        let meta = match &bag.metadata {
            Some(_) if t.message_count != n => {
                format!(" (metadata says {}: MISMATCH)", t.message_count)
            }
            Some(_) => format!(" (metadata: {})", t.message_count),
            None => String::new(),
        };
        println!("  {} [{}] {n} messages{meta}", t.name, t.type_name);
    }
    Ok(ExitCode::SUCCESS)
}
