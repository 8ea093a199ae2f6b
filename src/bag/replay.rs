//! Offline replay: a bag's camera and joint-state messages, in recorded order, through the
//! node's own pipeline (frame preparation, [`ObservationSync`], [`PolicyRunner`]) with no ROS
//! graph; the action chunks go to an output bag as `trajectory_msgs/JointTrajectory`.
//!
//! The loop is the node's: for each message, in bag-timestamp order, a frame is prepared
//! (`PolicyRunner::prepare_image`) or a joint state reduced to the state vector
//! (`JointMap::extract`) and pushed into the sync; then the sync is polled with `now` = the
//! message's bag time, and every observation it gives is run (sequential mode: encoder then
//! decoder) with inference index k = 0, 1, 2, … — noise `gaussian_noise(seed + k)`. Nothing
//! depends on the wall clock, so two replays write identical bags.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::metadata::BagMetadata;
use super::msgs::{self, Header, JointTrajectory, JointTrajectoryPoint, SensorMsg, Time};
use super::reader::Bag;
use super::writer::{BagWriter, WriterOptions};
use crate::error::{Error, Result};
use crate::model::preprocess::RawImage;
use crate::pipeline::runner::{ActionChunk, ModelImage, PolicyRunner};
use crate::pipeline::settings::{NodeSettings, ParamValue};
use crate::pipeline::sync::{JointSample, ObservationSync, SyncConfig};

/// Resolves a node-relative topic name as rcl does for a node `node` in namespace `ns`:
/// `/abs` stays, `~/x` becomes `<ns>/<node>/x`, `x` becomes `<ns>/x`.
pub fn resolve_topic(name: &str, ns: &str, node: &str) -> String {
    let ns = ns.trim_end_matches('/');
    if name.starts_with('/') {
        name.to_string()
    } else if let Some(rest) = name.strip_prefix("~/") {
        format!("{ns}/{node}/{rest}")
    } else if name == "~" {
        format!("{ns}/{node}")
    } else {
        format!("{ns}/{name}")
    }
}

/// The `trajectory_msgs/JointTrajectory` of an action chunk, as the node publishes it:
/// stamped with the observation time, one point per action step with `positions` = the
/// un-normalized action and `time_from_start` = (i + 1) · dt.
pub fn chunk_to_trajectory(chunk: &ActionChunk) -> JointTrajectory {
    JointTrajectory {
        header: Header {
            stamp: Time::from_nanos(chunk.stamp),
            frame_id: String::new(),
        },
        joint_names: chunk.joint_names.clone(),
        points: chunk
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| JointTrajectoryPoint {
                positions: p.clone(),
                time_from_start: Time::from_nanos(chunk.point_time_ns(i)),
                ..Default::default()
            })
            .collect(),
    }
}

/// Reads a ROS 2 parameters file (`<node>: ros__parameters: {...}` or `/**: ...`) into
/// (name, value) pairs for [`NodeSettings::from_overrides`]. Nested maps become dotted names.
pub fn load_params_file(path: &Path, node: &str) -> Result<Vec<(String, ParamValue)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |r: String| Error::Bag(format!("{}: {r}", path.display()));
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| bad(format!("not YAML: {e}")))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| bad("expected a map of node names".into()))?;
    let mut out = Vec::new();
    let mut found = false;
    for (k, v) in map {
        let key = k.as_str().unwrap_or("");
        let matches = key == "/**" || key == node || key.trim_start_matches('/') == node;
        if !matches {
            continue;
        }
        let params = v
            .get("ros__parameters")
            .ok_or_else(|| bad(format!("`{key}` has no `ros__parameters`")))?;
        found = true;
        flatten_params("", params, &mut out).map_err(bad)?;
    }
    if !found {
        return Err(bad(format!("no `{node}:` or `/**:` section")));
    }
    Ok(out)
}

fn flatten_params(
    prefix: &str,
    v: &serde_yaml::Value,
    out: &mut Vec<(String, ParamValue)>,
) -> std::result::Result<(), String> {
    use serde_yaml::Value as Y;
    let m = v
        .as_mapping()
        .ok_or_else(|| format!("`{prefix}ros__parameters` is not a map"))?;
    for (k, val) in m {
        let name = format!("{prefix}{}", k.as_str().unwrap_or_default());
        if let Y::Mapping(_) = val {
            flatten_params(&format!("{name}."), val, out)?;
            continue;
        }
        out.push((name.clone(), yaml_param(&name, val)?));
    }
    Ok(())
}

/// A YAML value as a ROS parameter value (the typing rcl applies to parameter files).
pub fn yaml_param(name: &str, v: &serde_yaml::Value) -> std::result::Result<ParamValue, String> {
    use serde_yaml::Value as Y;
    let scalar_err = || format!("parameter `{name}`: unsupported value {v:?}");
    Ok(match v {
        Y::Bool(b) => ParamValue::Bool(*b),
        Y::Number(n) if n.is_i64() => ParamValue::Integer(n.as_i64().expect("i64")),
        Y::Number(n) => ParamValue::Double(n.as_f64().ok_or_else(scalar_err)?),
        Y::String(s) => ParamValue::String(s.clone()),
        Y::Sequence(items) => {
            if items.iter().all(|x| x.is_bool()) {
                ParamValue::BoolArray(items.iter().filter_map(Y::as_bool).collect())
            } else if items.iter().all(|x| x.is_i64()) {
                ParamValue::IntegerArray(items.iter().filter_map(Y::as_i64).collect())
            } else if items.iter().all(|x| x.is_number()) {
                ParamValue::DoubleArray(items.iter().filter_map(Y::as_f64).collect())
            } else if items.iter().all(|x| x.is_string()) {
                ParamValue::StringArray(
                    items
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                )
            } else {
                return Err(format!(
                    "parameter `{name}`: arrays must hold one type (bool, integer, double or string)"
                ));
            }
        }
        _ => return Err(scalar_err()),
    })
}

/// Parses `name:=value` (the `-p` form) with YAML typing.
pub fn parse_param_override(s: &str) -> Result<(String, ParamValue)> {
    let (name, value) = s.split_once(":=").ok_or_else(|| Error::Parameter {
        name: s.to_string(),
        reason: "expected name:=value".into(),
    })?;
    let y: serde_yaml::Value = serde_yaml::from_str(value).map_err(|e| Error::Parameter {
        name: name.to_string(),
        reason: format!("value `{value}` is not YAML: {e}"),
    })?;
    let y = if y.is_null() {
        serde_yaml::Value::String(value.to_string())
    } else {
        y
    };
    let v = yaml_param(name, &y).map_err(|reason| Error::Parameter {
        name: name.to_string(),
        reason,
    })?;
    Ok((name.to_string(), v))
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The node's name and namespace (to resolve `settings`' relative topic names).
    pub node_name: String,
    pub namespace: String,
    /// (resolved node topic, bag topic): read the node's topic from a differently named bag
    /// topic (`--remap /camera/image_raw:=/cam0/color`).
    pub remaps: Vec<(String, String)>,
    pub output: PathBuf,
    pub writer: WriterOptions,
    /// Log and skip a message the node would refuse (bad image, missing joint) instead of
    /// failing the replay.
    pub skip_bad: bool,
    /// Stop after this many action chunks.
    pub max_chunks: Option<usize>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            node_name: "pi0".into(),
            namespace: "/".into(),
            remaps: Vec::new(),
            output: PathBuf::from("actions"),
            writer: WriterOptions::default(),
            skip_bad: false,
            max_chunks: None,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct ReplaySummary {
    /// Bag topics read for each camera, in `camera_topics` order, and for the joints.
    pub camera_topics: Vec<String>,
    pub joint_topic: String,
    /// Topic of the action chunks in the output bag.
    pub actions_topic: String,
    pub frames: u64,
    pub joint_states: u64,
    pub chunks: u64,
    /// Messages skipped with `skip_bad`, with the reason.
    pub skipped: Vec<String>,
    /// Observations that ran with a masked view.
    pub masked: u64,
    pub output: Option<BagMetadata>,
}

fn strip(e: &Error) -> String {
    match e {
        Error::Bag(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replays `bag` through `runner` with `settings` (topics, joints, sync, prompt, seed) and
/// writes the action chunks to `opts.output`. Chunks are also returned.
pub fn replay_offline(
    bag: &Bag,
    runner: &PolicyRunner,
    settings: &NodeSettings,
    opts: &ReplayOptions,
) -> Result<(ReplaySummary, Vec<ActionChunk>)> {
    if settings.concurrent {
        log::warn!(
            "offline replay runs the sequential schedule (one encoder + decoder per observation); \
             concurrent = true is not reproduced"
        );
    }
    let resolve = |name: &str| {
        let r = resolve_topic(name, &opts.namespace, &opts.node_name);
        opts.remaps
            .iter()
            .find(|(from, _)| *from == r)
            .map_or(r, |(_, to)| to.clone())
    };
    let cam_topics: Vec<String> = settings.camera_topics.iter().map(|t| resolve(t)).collect();
    let joint_topic = resolve(&settings.joint_states_topic);
    let actions_topic = resolve_topic(&settings.actions_topic, &opts.namespace, &opts.node_name);
    let mut summary = ReplaySummary {
        camera_topics: cam_topics.clone(),
        joint_topic: joint_topic.clone(),
        actions_topic: actions_topic.clone(),
        ..Default::default()
    };
    // Every input topic must be in the bag, with a type the node reads.
    let mut role = vec![None; bag.topics.len()];
    for (i, t) in cam_topics.iter().enumerate() {
        let idx = bag
            .topic_index(t)
            .ok_or_else(|| missing_topic(bag, t, "camera"))?;
        let ty = &bag.topics[idx].type_name;
        if ty != msgs::IMAGE && ty != msgs::COMPRESSED_IMAGE {
            return Err(Error::Bag(format!(
                "{}: camera topic `{t}` has type {ty}, expected {}",
                bag.path.display(),
                msgs::IMAGE
            )));
        }
        role[idx] = Some(Role::Camera(i));
    }
    {
        let idx = bag
            .topic_index(&joint_topic)
            .ok_or_else(|| missing_topic(bag, &joint_topic, "joint-state"))?;
        let ty = &bag.topics[idx].type_name;
        if ty != msgs::JOINT_STATE {
            return Err(Error::Bag(format!(
                "{}: joint-state topic `{joint_topic}` has type {ty}, expected {}",
                bag.path.display(),
                msgs::JOINT_STATE
            )));
        }
        if role[idx].is_some() {
            return Err(Error::Bag(format!(
                "topic `{joint_topic}` is both a camera and the joint-state topic"
            )));
        }
        role[idx] = Some(Role::Joints);
    }
    let wanted: Vec<&str> = cam_topics
        .iter()
        .map(String::as_str)
        .chain([joint_topic.as_str()])
        .collect();

    let mut writer = BagWriter::create(&opts.output, opts.writer.clone())?;
    let out_topic = writer.add_topic(&actions_topic, msgs::JOINT_TRAJECTORY)?;
    let mut sync: ObservationSync<ModelImage> =
        ObservationSync::new(SyncConfig::from_settings(settings));
    let mut chunks = Vec::new();
    let mut index = 0u64;
    let mut done = false;
    let mut n = 0u64;
    let result = bag.for_each(Some(&wanted), |m| {
        if done {
            return Ok(());
        }
        n += 1;
        let topic = &bag.topics[m.topic];
        let what = |e: &Error| {
            format!(
                "message {n} on `{}` at {}.{:09} s: {}",
                topic.name,
                m.timestamp.div_euclid(1_000_000_000),
                m.timestamp.rem_euclid(1_000_000_000),
                strip(e)
            )
        };
        let pushed: Result<()> = (|| {
            match role[m.topic] {
                Some(Role::Camera(c)) => {
                    let img = match SensorMsg::decode(&topic.type_name, &m.data)? {
                        SensorMsg::Image(i) => i,
                        SensorMsg::CompressedImage(ci) => super::compressed::decompress(&ci)?,
                        SensorMsg::JointState(_) => unreachable!("type checked above"),
                    };
                    let raw = RawImage {
                        width: img.width as usize,
                        height: img.height as usize,
                        encoding: &img.encoding,
                        step: img.step as usize,
                        data: &img.data,
                    };
                    let prepared = runner.prepare_image(&raw)?;
                    sync.push_frame(c, img.header.stamp.to_nanos(), Arc::new(prepared));
                    summary.frames += 1;
                }
                Some(Role::Joints) => {
                    let js = msgs::JointState::decode(&m.data)?;
                    let positions = runner.joint_map().extract(&js.name, &js.position)?;
                    sync.push_joints(JointSample {
                        stamp: js.header.stamp.to_nanos(),
                        positions,
                    });
                    summary.joint_states += 1;
                }
                None => {}
            }
            Ok(())
        })();
        if let Err(e) = pushed {
            let msg = what(&e);
            if opts.skip_bad {
                log::warn!("skipping {msg}");
                summary.skipped.push(msg);
                return Ok(());
            }
            return Err(Error::Bag(msg));
        }
        while let Some(obs) = sync.poll(m.timestamp) {
            if obs.images.iter().any(Option::is_none) {
                summary.masked += 1;
            }
            let chunk = runner
                .infer(&obs, &settings.prompt, index)
                .map_err(|e| Error::Bag(format!("inference {index}: {e}")))?;
            index += 1;
            let traj = chunk_to_trajectory(&chunk);
            writer.write(out_topic, m.timestamp, &traj.encode())?;
            chunks.push(chunk);
            summary.chunks += 1;
            if opts.max_chunks.is_some_and(|max| chunks.len() >= max) {
                done = true;
                break;
            }
        }
        Ok(())
    });
    // The output bag is finished even when the input failed part-way, so that what was
    // computed can be inspected; the error is still returned.
    let meta = writer.finish()?;
    result?;
    summary.output = Some(meta);
    Ok((summary, chunks))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Camera(usize),
    Joints,
}

fn missing_topic(bag: &Bag, topic: &str, what: &str) -> Error {
    let have: Vec<String> = bag
        .topics
        .iter()
        .map(|t| format!("{} [{}]", t.name, t.type_name))
        .collect();
    Error::Bag(format!(
        "{}: {what} topic `{topic}` is not in the bag (topics: {}); map it with --remap {topic}:=<bag topic> \
         or set the node parameter",
        bag.path.display(),
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_resolution() {
        assert_eq!(
            resolve_topic("camera/image_raw", "/", "pi0"),
            "/camera/image_raw"
        );
        assert_eq!(resolve_topic("~/actions", "/", "pi0"), "/pi0/actions");
        assert_eq!(
            resolve_topic("~/actions", "/robot", "pi0"),
            "/robot/pi0/actions"
        );
        assert_eq!(resolve_topic("/abs", "/robot", "pi0"), "/abs");
        assert_eq!(resolve_topic("js", "/robot/", "pi0"), "/robot/js");
    }

    #[test]
    fn param_overrides_are_typed_like_yaml() {
        assert_eq!(
            parse_param_override("seed:=3").unwrap(),
            ("seed".into(), ParamValue::Integer(3))
        );
        assert_eq!(
            parse_param_override("sync_slop_s:=0.1").unwrap().1,
            ParamValue::Double(0.1)
        );
        assert_eq!(
            parse_param_override("state_joints:=[a, b]").unwrap().1,
            ParamValue::StringArray(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_param_override("prompt:=pick up the cube").unwrap().1,
            ParamValue::String("pick up the cube".into())
        );
        let e = parse_param_override("seed=3").unwrap_err().to_string();
        assert!(e.contains("expected name:=value"), "{e}");
    }

    #[test]
    fn params_file_sections() {
        let dir = std::env::temp_dir().join(format!("pi0-bag-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.yaml");
        std::fs::write(
            &p,
            "other:\n  ros__parameters:\n    seed: 9\npi0:\n  ros__parameters:\n    seed: 4\n    \
             camera_slots: [0, 1]\n    control_rate_hz: 20\n",
        )
        .unwrap();
        let v = load_params_file(&p, "pi0").unwrap();
        assert_eq!(
            v,
            vec![
                ("seed".into(), ParamValue::Integer(4)),
                ("camera_slots".into(), ParamValue::IntegerArray(vec![0, 1])),
                ("control_rate_hz".into(), ParamValue::Integer(20)),
            ]
        );
        let e = load_params_file(&p, "nope").unwrap_err().to_string();
        assert!(e.contains("no `nope:` or `/**:` section"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
