//! The node's parameters: one typed struct, a table of every parameter (name, type,
//! description, whether it changes live) and validation with a reason for every refusal.
//!
//! ROS-free: the `ros` module maps `r2r::ParameterValue` to [`ParamValue`] and back; the bag
//! replay tool builds the same [`NodeSettings`] from its own flags or the node's YAML file.
//! Validation never leaves a half-applied value: [`NodeSettings::set`] checks first, then
//! assigns, so a refused value keeps the old one.

use std::fmt;

use crate::error::{Error, Result};

/// A parameter value, mirroring ROS 2's `rcl_interfaces/ParameterValue` without ROS.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Integer(i64),
    Double(f64),
    String(String),
    BoolArray(Vec<bool>),
    IntegerArray(Vec<i64>),
    DoubleArray(Vec<f64>),
    StringArray(Vec<String>),
}

impl ParamValue {
    /// The type's name as `ros2 param` prints it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool",
            ParamValue::Integer(_) => "integer",
            ParamValue::Double(_) => "double",
            ParamValue::String(_) => "string",
            ParamValue::BoolArray(_) => "bool array",
            ParamValue::IntegerArray(_) => "integer array",
            ParamValue::DoubleArray(_) => "double array",
            ParamValue::StringArray(_) => "string array",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Integer(v) => write!(f, "{v}"),
            ParamValue::Double(v) => write!(f, "{v}"),
            ParamValue::String(v) => write!(f, "{v:?}"),
            ParamValue::BoolArray(v) => write!(f, "{v:?}"),
            ParamValue::IntegerArray(v) => write!(f, "{v:?}"),
            ParamValue::DoubleArray(v) => write!(f, "{v:?}"),
            ParamValue::StringArray(v) => write!(f, "{v:?}"),
        }
    }
}

/// Declared type of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Bool,
    Integer,
    Double,
    String,
    IntegerArray,
    StringArray,
}

/// One parameter of the node.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Shown by `ros2 param describe`.
    pub description: &'static str,
    /// Live parameters take effect without a restart; the others are read-only once the node
    /// runs (set them at launch: `-p`, `--params-file`, launch arguments).
    pub live: bool,
}

/// Every parameter the node declares, in the order `ros2 param list` shows them.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "encoder_pct",
        kind: ParamKind::Integer,
        description: "Percent of the GPU's SMs for the encoder (prefix) stream, 1..100. Live.",
        live: true,
    },
    ParamSpec {
        name: "decoder_pct",
        kind: ParamKind::Integer,
        description: "Percent of the GPU's SMs for the decoder (action expert) stream, 1..100; \
                      encoder_pct + decoder_pct > 100 means the partitions overlap. Live.",
        live: true,
    },
    ParamSpec {
        name: "concurrent",
        kind: ParamKind::Bool,
        description: "Run the encoder at camera rate and the decoder at control rate, each on its \
                      own partition (true), or encoder then decoder per observation (false). Live.",
        live: true,
    },
    ParamSpec {
        name: "prompt",
        kind: ParamKind::String,
        description: "Task instruction given to the policy (1..1024 bytes). Live.",
        live: true,
    },
    ParamSpec {
        name: "partition",
        kind: ParamKind::String,
        description:
            "SM partition backend: green (green contexts), mps (MPS affinity), none (shared GPU).",
        live: false,
    },
    ParamSpec {
        name: "backend",
        kind: ParamKind::String,
        description: "Compute backend: auto (cuda when a GPU is usable, else cpu), cuda, cpu.",
        live: false,
    },
    ParamSpec {
        name: "checkpoint",
        kind: ParamKind::String,
        description:
            "pi0 checkpoint directory (safetensors + config.json). Empty: a built-in seeded \
                      random tiny model (random weights, for demos and tests).",
        live: false,
    },
    ParamSpec {
        name: "norm_stats",
        kind: ParamKind::String,
        description: "Normalization statistics file (openpi norm_stats.json). Empty: \
                      <checkpoint>/norm_stats.json when present, else identity.",
        live: false,
    },
    ParamSpec {
        name: "tokenizer",
        kind: ParamKind::String,
        description:
            "Tokenizer directory or file. Empty: the checkpoint directory's tokenizer when \
                      present, else the byte-level fallback (random-weight demos only).",
        live: false,
    },
    ParamSpec {
        name: "camera_topics",
        kind: ParamKind::StringArray,
        description: "sensor_msgs/Image topics, one per camera. The first live camera paces the \
                      observations.",
        live: false,
    },
    ParamSpec {
        name: "camera_slots",
        kind: ParamKind::IntegerArray,
        description: "pi0 view slot of each camera topic (0 base, 1 left wrist, 2 right wrist), \
                      same length as camera_topics.",
        live: false,
    },
    ParamSpec {
        name: "joint_states_topic",
        kind: ParamKind::String,
        description: "sensor_msgs/JointState topic.",
        live: false,
    },
    ParamSpec {
        name: "state_joints",
        kind: ParamKind::StringArray,
        description: "Joint names whose positions form the state vector, in order (zero-padded to \
                      the model's action_dim).",
        live: false,
    },
    ParamSpec {
        name: "action_joints",
        kind: ParamKind::StringArray,
        description: "Joint names of the published trajectory: action column i drives \
                      action_joints[i]. Empty string list entry not allowed.",
        live: false,
    },
    ParamSpec {
        name: "actions_topic",
        kind: ParamKind::String,
        description: "trajectory_msgs/JointTrajectory output topic (action chunks).",
        live: false,
    },
    ParamSpec {
        name: "control_rate_hz",
        kind: ParamKind::Double,
        description:
            "Control rate: trajectory points are 1/control_rate_hz apart, and the decoder \
                      timer (decoder_trigger = timer) runs at this rate.",
        live: false,
    },
    ParamSpec {
        name: "decoder_trigger",
        kind: ParamKind::String,
        description: "Concurrent mode: run the decoder on each new joint_state, or on a timer at \
                      control_rate_hz.",
        live: false,
    },
    ParamSpec {
        name: "chunk",
        kind: ParamKind::Integer,
        description: "Action chunk length (trajectory points); 0 = the model's action_horizon.",
        live: false,
    },
    ParamSpec {
        name: "sync_slop_s",
        kind: ParamKind::Double,
        description:
            "Approximate time sync: most a camera frame's stamp may differ from the pacing \
                      frame's stamp to join its observation (seconds).",
        live: false,
    },
    ParamSpec {
        name: "max_age_s",
        kind: ParamKind::Double,
        description: "Frames and joint states older than this (vs the node clock) are not used; \
                      0 disables the check (e.g. unsynchronised clocks).",
        live: false,
    },
    ParamSpec {
        name: "missing_camera",
        kind: ParamKind::String,
        description:
            "A late or missing camera: mask (run with that view masked) or wait (hold the \
                      observation until it arrives, dropping it after max_age_s).",
        live: false,
    },
    ParamSpec {
        name: "seed",
        kind: ParamKind::Integer,
        description: "Noise seed: inference k (0, 1, 2, ... since start) uses \
                      gaussian_noise(seed + k), so outputs are reproducible.",
        live: false,
    },
    ParamSpec {
        name: "model_cache",
        kind: ParamKind::String,
        description:
            "Directory for the built-in random checkpoint. Empty: $XDG_CACHE_HOME/pi0_mps \
                      or ~/.cache/pi0_mps.",
        live: false,
    },
];

/// Looks a parameter up by name.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|p| p.name == name)
}

/// How the GPU's SMs are split between the two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    Green,
    Mps,
    None,
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cuda,
    Cpu,
}

/// What happens to an observation when a camera has no frame in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Run with the view masked.
    Mask,
    /// Hold the observation until the frame arrives (or drop it once older than `max_age`).
    Wait,
}

/// What runs the decoder in concurrent mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderTrigger {
    JointState,
    Timer,
}

macro_rules! str_enum {
    ($ty:ident { $($v:ident = $s:literal),* $(,)? }) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($s),*];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($ty::$v),)* _ => None }
            }
        }
    };
}
str_enum!(Partition { Green = "green", Mps = "mps", None = "none" });
str_enum!(BackendChoice { Auto = "auto", Cuda = "cuda", Cpu = "cpu" });
str_enum!(MissingPolicy { Mask = "mask", Wait = "wait" });
str_enum!(DecoderTrigger { JointState = "joint_state", Timer = "timer" });

/// Every parameter of the node, typed. `Default` is what config/pi0.yaml ships.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    pub encoder_pct: u32,
    pub decoder_pct: u32,
    pub concurrent: bool,
    pub prompt: String,
    pub partition: Partition,
    pub backend: BackendChoice,
    pub checkpoint: String,
    pub norm_stats: String,
    pub tokenizer: String,
    pub camera_topics: Vec<String>,
    pub camera_slots: Vec<usize>,
    pub joint_states_topic: String,
    pub state_joints: Vec<String>,
    pub action_joints: Vec<String>,
    pub actions_topic: String,
    pub control_rate_hz: f64,
    pub decoder_trigger: DecoderTrigger,
    pub chunk: usize,
    pub sync_slop_s: f64,
    pub max_age_s: f64,
    pub missing_camera: MissingPolicy,
    pub seed: u64,
    pub model_cache: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let joints: Vec<String> = (1..=7).map(|i| format!("joint{i}")).collect();
        NodeSettings {
            encoder_pct: 50,
            decoder_pct: 50,
            concurrent: false,
            prompt: "pick up the cube".into(),
            partition: Partition::Green,
            backend: BackendChoice::Auto,
            checkpoint: String::new(),
            norm_stats: String::new(),
            tokenizer: String::new(),
            camera_topics: vec!["camera/image_raw".into()],
            camera_slots: vec![0],
            joint_states_topic: "joint_states".into(),
            state_joints: joints.clone(),
            action_joints: joints,
            actions_topic: "~/actions".into(),
            control_rate_hz: 50.0,
            decoder_trigger: DecoderTrigger::JointState,
            chunk: 0,
            sync_slop_s: 0.05,
            max_age_s: 0.5,
            missing_camera: MissingPolicy::Mask,
            seed: 0,
            model_cache: String::new(),
        }
    }
}

const MAX_PROMPT_BYTES: usize = 1024;
const MAX_CAMERAS: usize = 3;
const MAX_CHUNK: usize = 1000;

fn refuse<T>(msg: impl Into<String>) -> std::result::Result<T, String> {
    Err(msg.into())
}

fn want_int(name: &str, v: &ParamValue) -> std::result::Result<i64, String> {
    match v {
        ParamValue::Integer(x) => Ok(*x),
        other => refuse(format!(
            "{name} must be an integer, got {} {other}",
            other.type_name()
        )),
    }
}

fn want_pct(name: &str, v: &ParamValue) -> std::result::Result<u32, String> {
    let x = want_int(name, v)?;
    if !(1..=100).contains(&x) {
        return refuse(format!(
            "{name} must be in 1..100 (percent of the GPU's SMs), got {x}"
        ));
    }
    Ok(x as u32)
}

fn want_bool(name: &str, v: &ParamValue) -> std::result::Result<bool, String> {
    match v {
        ParamValue::Bool(x) => Ok(*x),
        other => refuse(format!(
            "{name} must be a bool, got {} {other}",
            other.type_name()
        )),
    }
}

fn want_str<'a>(name: &str, v: &'a ParamValue) -> std::result::Result<&'a str, String> {
    match v {
        ParamValue::String(x) => Ok(x),
        other => refuse(format!(
            "{name} must be a string, got {} {other}",
            other.type_name()
        )),
    }
}

/// Doubles also accept integers (YAML `control_rate_hz: 50` is an integer).
fn want_f64(name: &str, v: &ParamValue) -> std::result::Result<f64, String> {
    let x = match v {
        ParamValue::Double(x) => *x,
        ParamValue::Integer(x) => *x as f64,
        other => {
            return refuse(format!(
                "{name} must be a double, got {} {other}",
                other.type_name()
            ))
        }
    };
    if !x.is_finite() {
        return refuse(format!("{name} must be finite, got {x}"));
    }
    Ok(x)
}

fn want_strings(name: &str, v: &ParamValue) -> std::result::Result<Vec<String>, String> {
    match v {
        ParamValue::StringArray(x) => {
            if x.iter().any(|s| s.trim().is_empty()) {
                return refuse(format!("{name} must not contain empty names"));
            }
            Ok(x.clone())
        }
        other => refuse(format!(
            "{name} must be a string array, got {} {other}",
            other.type_name()
        )),
    }
}

fn want_enum<T>(
    name: &str,
    v: &ParamValue,
    parse: fn(&str) -> Option<T>,
    names: &[&str],
) -> std::result::Result<T, String> {
    let s = want_str(name, v)?;
    parse(s).ok_or_else(|| format!("{name} must be one of {}, got {s:?}", names.join(", ")))
}

fn unique(name: &str, v: &[String]) -> std::result::Result<(), String> {
    for (i, a) in v.iter().enumerate() {
        if v[..i].contains(a) {
            return refuse(format!("{name} lists {a:?} twice"));
        }
    }
    Ok(())
}

impl NodeSettings {
    /// Current value of a parameter.
    pub fn get(&self, name: &str) -> Option<ParamValue> {
        use ParamValue as V;
        Some(match name {
            "encoder_pct" => V::Integer(self.encoder_pct.into()),
            "decoder_pct" => V::Integer(self.decoder_pct.into()),
            "concurrent" => V::Bool(self.concurrent),
            "prompt" => V::String(self.prompt.clone()),
            "partition" => V::String(self.partition.as_str().into()),
            "backend" => V::String(self.backend.as_str().into()),
            "checkpoint" => V::String(self.checkpoint.clone()),
            "norm_stats" => V::String(self.norm_stats.clone()),
            "tokenizer" => V::String(self.tokenizer.clone()),
            "camera_topics" => V::StringArray(self.camera_topics.clone()),
            "camera_slots" => {
                V::IntegerArray(self.camera_slots.iter().map(|&s| s as i64).collect())
            }
            "joint_states_topic" => V::String(self.joint_states_topic.clone()),
            "state_joints" => V::StringArray(self.state_joints.clone()),
            "action_joints" => V::StringArray(self.action_joints.clone()),
            "actions_topic" => V::String(self.actions_topic.clone()),
            "control_rate_hz" => V::Double(self.control_rate_hz),
            "decoder_trigger" => V::String(self.decoder_trigger.as_str().into()),
            "chunk" => V::Integer(self.chunk as i64),
            "sync_slop_s" => V::Double(self.sync_slop_s),
            "max_age_s" => V::Double(self.max_age_s),
            "missing_camera" => V::String(self.missing_camera.as_str().into()),
            "seed" => V::Integer(self.seed as i64),
            "model_cache" => V::String(self.model_cache.clone()),
            _ => return None,
        })
    }

    /// Sets one parameter after checking its type and range; on error (a reason a user can
    /// act on) nothing changes. Cross-parameter relations are checked by [`Self::validate`].
    pub fn set(&mut self, name: &str, v: &ParamValue) -> std::result::Result<(), String> {
        match name {
            "encoder_pct" => self.encoder_pct = want_pct(name, v)?,
            "decoder_pct" => self.decoder_pct = want_pct(name, v)?,
            "concurrent" => self.concurrent = want_bool(name, v)?,
            "prompt" => {
                let s = want_str(name, v)?;
                if s.trim().is_empty() {
                    return refuse("prompt must not be empty");
                }
                if s.len() > MAX_PROMPT_BYTES {
                    return refuse(format!(
                        "prompt is {} bytes, at most {MAX_PROMPT_BYTES}",
                        s.len()
                    ));
                }
                self.prompt = s.to_string();
            }
            "partition" => self.partition = want_enum(name, v, Partition::parse, Partition::NAMES)?,
            "backend" => {
                self.backend = want_enum(name, v, BackendChoice::parse, BackendChoice::NAMES)?
            }
            "checkpoint" => self.checkpoint = want_str(name, v)?.to_string(),
            "norm_stats" => self.norm_stats = want_str(name, v)?.to_string(),
            "tokenizer" => self.tokenizer = want_str(name, v)?.to_string(),
            "model_cache" => self.model_cache = want_str(name, v)?.to_string(),
            "camera_topics" => {
                let t = want_strings(name, v)?;
                if t.is_empty() || t.len() > MAX_CAMERAS {
                    return refuse(format!(
                        "camera_topics must name 1..{MAX_CAMERAS} topics, got {}",
                        t.len()
                    ));
                }
                unique(name, &t)?;
                self.camera_topics = t;
            }
            "camera_slots" => {
                let s = match v {
                    ParamValue::IntegerArray(x) => x.clone(),
                    other => {
                        return refuse(format!(
                            "camera_slots must be an integer array, got {} {other}",
                            other.type_name()
                        ))
                    }
                };
                if s.iter().any(|&x| !(0..MAX_CAMERAS as i64).contains(&x)) {
                    return refuse(format!(
                        "camera_slots entries must be 0, 1 or 2 (base, left wrist, right wrist), got {s:?}"
                    ));
                }
                let s: Vec<usize> = s.into_iter().map(|x| x as usize).collect();
                if (1..s.len()).any(|i| s[..i].contains(&s[i])) {
                    return refuse(format!("camera_slots must not repeat a slot, got {s:?}"));
                }
                self.camera_slots = s;
            }
            "joint_states_topic" | "actions_topic" => {
                let s = want_str(name, v)?;
                if s.trim().is_empty() {
                    return refuse(format!("{name} must not be empty"));
                }
                if name == "actions_topic" {
                    self.actions_topic = s.into();
                } else {
                    self.joint_states_topic = s.into();
                }
            }
            "state_joints" | "action_joints" => {
                let j = want_strings(name, v)?;
                if j.is_empty() {
                    return refuse(format!("{name} must name at least one joint"));
                }
                unique(name, &j)?;
                if name == "state_joints" {
                    self.state_joints = j;
                } else {
                    self.action_joints = j;
                }
            }
            "control_rate_hz" => {
                let x = want_f64(name, v)?;
                if !(0.1..=10_000.0).contains(&x) {
                    return refuse(format!("control_rate_hz must be in 0.1..10000, got {x}"));
                }
                self.control_rate_hz = x;
            }
            "decoder_trigger" => {
                self.decoder_trigger =
                    want_enum(name, v, DecoderTrigger::parse, DecoderTrigger::NAMES)?
            }
            "chunk" => {
                let x = want_int(name, v)?;
                if !(0..=MAX_CHUNK as i64).contains(&x) {
                    return refuse(format!("chunk must be in 0..{MAX_CHUNK}, got {x}"));
                }
                self.chunk = x as usize;
            }
            "sync_slop_s" | "max_age_s" => {
                let x = want_f64(name, v)?;
                if !(0.0..=3600.0).contains(&x) {
                    return refuse(format!("{name} must be in 0..3600 seconds, got {x}"));
                }
                if name == "sync_slop_s" {
                    self.sync_slop_s = x;
                } else {
                    self.max_age_s = x;
                }
            }
            "missing_camera" => {
                self.missing_camera =
                    want_enum(name, v, MissingPolicy::parse, MissingPolicy::NAMES)?
            }
            "seed" => {
                let x = want_int(name, v)?;
                if x < 0 {
                    return refuse(format!("seed must be >= 0, got {x}"));
                }
                self.seed = x as u64;
            }
            _ => return refuse(format!("unknown parameter {name:?}")),
        }
        Ok(())
    }

    /// Sets a parameter while the node runs: only live parameters; refusals keep the old value.
    pub fn set_live(&mut self, name: &str, v: &ParamValue) -> std::result::Result<(), String> {
        let Some(spec) = spec(name) else {
            return refuse(format!("unknown parameter {name:?}"));
        };
        if !spec.live {
            if self.get(name).as_ref() == Some(v) {
                return Ok(());
            }
            return refuse(format!(
                "{name} is read-only while the node runs; set it at launch \
                 (live parameters: encoder_pct, decoder_pct, concurrent, prompt)"
            ));
        }
        let mut next = self.clone();
        next.set(name, v)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Relations between parameters.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.camera_slots.len() != self.camera_topics.len() {
            return refuse(format!(
                "camera_slots has {} entries but camera_topics has {}: give one slot per topic",
                self.camera_slots.len(),
                self.camera_topics.len()
            ));
        }
        Ok(())
    }

    /// Builds settings from (name, value) overrides (launch parameters), failing on the first
    /// bad one. Unknown names are refused too, so a typo in a params file is not silent.
    pub fn from_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, &'a ParamValue)>,
    ) -> Result<Self> {
        let mut s = NodeSettings::default();
        for (name, v) in overrides {
            s.set(name, v).map_err(|reason| Error::Parameter {
                name: name.to_string(),
                reason,
            })?;
        }
        s.validate().map_err(|reason| Error::Parameter {
            name: "camera_slots".into(),
            reason,
        })?;
        Ok(s)
    }

    /// Seconds between trajectory points.
    pub fn control_period_s(&self) -> f64 {
        1.0 / self.control_rate_hz
    }

    /// Noise seed of inference `k` (0-based count since the node started).
    pub fn noise_seed(&self, k: u64) -> u64 {
        self.seed.wrapping_add(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_param_round_trips_its_default() {
        let d = NodeSettings::default();
        for p in PARAMS {
            let v = d
                .get(p.name)
                .unwrap_or_else(|| panic!("{} has no getter", p.name));
            let mut s = d.clone();
            s.set(p.name, &v)
                .unwrap_or_else(|e| panic!("default of {} refused: {e}", p.name));
            assert_eq!(s, d, "{}", p.name);
            let kind_ok = matches!(
                (p.kind, &v),
                (ParamKind::Bool, ParamValue::Bool(_))
                    | (ParamKind::Integer, ParamValue::Integer(_))
                    | (ParamKind::Double, ParamValue::Double(_))
                    | (ParamKind::String, ParamValue::String(_))
                    | (ParamKind::IntegerArray, ParamValue::IntegerArray(_))
                    | (ParamKind::StringArray, ParamValue::StringArray(_))
            );
            assert!(kind_ok, "{} declared {:?} but reads {v:?}", p.name, p.kind);
        }
        d.validate().unwrap();
    }

    #[test]
    fn pct_range_and_type_are_checked_and_old_value_stays() {
        let mut s = NodeSettings::default();
        s.set_live("encoder_pct", &ParamValue::Integer(70)).unwrap();
        assert_eq!(s.encoder_pct, 70);
        for bad in [
            ParamValue::Integer(0),
            ParamValue::Integer(150),
            ParamValue::Integer(-3),
            ParamValue::String("abc".into()),
            ParamValue::Double(70.0),
        ] {
            let e = s.set_live("encoder_pct", &bad).unwrap_err();
            assert!(e.contains("encoder_pct"), "{e}");
            assert_eq!(s.encoder_pct, 70, "old value must stay after {bad:?}");
        }
        let e = s
            .set_live("encoder_pct", &ParamValue::Integer(150))
            .unwrap_err();
        assert!(e.contains("1..100") && e.contains("150"), "{e}");
        let e = s
            .set_live("encoder_pct", &ParamValue::String("abc".into()))
            .unwrap_err();
        assert!(e.contains("integer") && e.contains("abc"), "{e}");
    }

    #[test]
    fn read_only_params_are_refused_at_run_time_unless_unchanged() {
        let mut s = NodeSettings::default();
        let e = s
            .set_live("checkpoint", &ParamValue::String("/x".into()))
            .unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        assert_eq!(s.checkpoint, "");
        s.set_live("checkpoint", &ParamValue::String(String::new()))
            .unwrap();
        s.set_live("prompt", &ParamValue::String("open the drawer".into()))
            .unwrap();
        assert_eq!(s.prompt, "open the drawer");
        assert!(s
            .set_live("prompt", &ParamValue::String("  ".into()))
            .is_err());
        assert!(s.set_live("nope", &ParamValue::Bool(true)).is_err());
    }

    #[test]
    fn enums_arrays_and_doubles() {
        let mut s = NodeSettings::default();
        s.set("control_rate_hz", &ParamValue::Integer(20)).unwrap();
        assert_eq!(s.control_period_s(), 0.05);
        assert!(s
            .set("control_rate_hz", &ParamValue::Double(f64::NAN))
            .is_err());
        assert!(s.set("control_rate_hz", &ParamValue::Double(0.0)).is_err());
        let e = s
            .set("partition", &ParamValue::String("foo".into()))
            .unwrap_err();
        assert!(e.contains("green, mps, none"), "{e}");
        s.set("missing_camera", &ParamValue::String("wait".into()))
            .unwrap();
        assert_eq!(s.missing_camera, MissingPolicy::Wait);
        assert!(s
            .set("camera_slots", &ParamValue::IntegerArray(vec![0, 3]))
            .is_err());
        assert!(s
            .set("camera_slots", &ParamValue::IntegerArray(vec![1, 1]))
            .is_err());
        assert!(s
            .set(
                "state_joints",
                &ParamValue::StringArray(vec!["a".into(), "a".into()])
            )
            .is_err());
        s.set(
            "camera_topics",
            &ParamValue::StringArray(vec!["a".into(), "b".into()]),
        )
        .unwrap();
        assert!(s.validate().unwrap_err().contains("one slot per topic"));
        let err = NodeSettings::from_overrides([("encoder_pct", &ParamValue::Integer(101))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("encoder_pct"), "{err}");
        assert!(NodeSettings::from_overrides([("typo", &ParamValue::Bool(true))]).is_err());
    }

    #[test]
    fn noise_seed_is_seed_plus_index() {
        let s = NodeSettings {
            seed: 40,
            ..NodeSettings::default()
        };
        assert_eq!(s.noise_seed(2), 42);
    }

    /// config/pi0.yaml (shipped with the package) lists every parameter with its default.
    #[test]
    fn shipped_params_file_has_every_parameter_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pi0.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let params = doc["/**"]["ros__parameters"]
            .as_mapping()
            .expect("/**: ros__parameters: mapping");
        let d = NodeSettings::default();
        for p in PARAMS {
            let v = params
                .get(p.name)
                .unwrap_or_else(|| panic!("config/pi0.yaml lacks {}", p.name));
            let v = match v {
                serde_yaml::Value::Bool(b) => ParamValue::Bool(*b),
                serde_yaml::Value::Number(n) if n.is_i64() => {
                    ParamValue::Integer(n.as_i64().unwrap())
                }
                serde_yaml::Value::Number(n) => ParamValue::Double(n.as_f64().unwrap()),
                serde_yaml::Value::String(s) => ParamValue::String(s.clone()),
                serde_yaml::Value::Sequence(xs) if xs.iter().all(|x| x.is_i64()) => {
                    ParamValue::IntegerArray(xs.iter().map(|x| x.as_i64().unwrap()).collect())
                }
                serde_yaml::Value::Sequence(xs) => ParamValue::StringArray(
                    xs.iter()
                        .map(|x| x.as_str().expect("string list").to_string())
                        .collect(),
                ),
                other => panic!("{}: unexpected YAML {other:?}", p.name),
            };
            assert_eq!(Some(v), d.get(p.name), "{} in config/pi0.yaml", p.name);
        }
        assert_eq!(
            params.len(),
            PARAMS.len(),
            "config/pi0.yaml has extra entries"
        );
    }
}
