//! `metadata.yaml` of a rosbag2 bag folder: versions 1 to 9 are read (Humble writes 5, Iron 8,
//! Jazzy 9); versions 5 and 9 are written.
//!
//! Differences by version that matter here: `files[]` from v5, `offered_qos_profiles` a YAML
//! *string* in v4–v8 and a list of maps in v9, `type_description_hash` from v7, `custom_data`
//! from v6, `ros_distro` from v8.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The newest metadata version this reader knows.
pub const MAX_VERSION: u32 = 9;

/// One topic of the bag as metadata.yaml (or the storage itself) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// e.g. `sensor_msgs/msg/Image`.
    pub type_name: String,
    /// `cdr` for every bag this crate reads messages from.
    pub serialization_format: String,
    /// The recorded QoS profiles, re-serialized as YAML text (empty when none were recorded).
    pub offered_qos_profiles: String,
    /// `RIHS01_…` (v7+), or empty.
    pub type_description_hash: String,
    /// Messages of this topic according to metadata.yaml (0 when the bag has no metadata).
    pub message_count: u64,
}

/// One storage file listed in metadata.yaml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub path: String,
    pub starting_time_ns: i64,
    pub duration_ns: u64,
    pub message_count: u64,
}

/// The parsed `rosbag2_bagfile_information`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BagMetadata {
    pub version: u32,
    pub storage_identifier: String,
    pub duration_ns: u64,
    pub starting_time_ns: i64,
    pub message_count: u64,
    pub topics: Vec<TopicInfo>,
    pub compression_format: String,
    pub compression_mode: String,
    pub relative_file_paths: Vec<String>,
    pub files: Vec<FileInfo>,
    pub ros_distro: String,
}

#[derive(Deserialize)]
struct Root {
    rosbag2_bagfile_information: Raw,
}

#[derive(Deserialize)]
struct Raw {
    version: u32,
    storage_identifier: String,
    #[serde(default)]
    duration: Option<Nanos>,
    #[serde(default)]
    starting_time: Option<SinceEpoch>,
    #[serde(default)]
    message_count: u64,
    #[serde(default)]
    topics_with_message_count: Option<Vec<RawTopicCount>>,
    #[serde(default)]
    compression_format: Option<String>,
    #[serde(default)]
    compression_mode: Option<String>,
    #[serde(default)]
    relative_file_paths: Option<Vec<String>>,
    #[serde(default)]
    files: Option<Vec<RawFile>>,
    #[serde(default)]
    ros_distro: Option<String>,
}

#[derive(Deserialize)]
struct Nanos {
    nanoseconds: u64,
}

#[derive(Deserialize)]
struct SinceEpoch {
    nanoseconds_since_epoch: i64,
}

#[derive(Deserialize)]
struct RawTopicCount {
    topic_metadata: RawTopic,
    #[serde(default)]
    message_count: u64,
}

#[derive(Deserialize)]
struct RawTopic {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    serialization_format: String,
    #[serde(default)]
    offered_qos_profiles: serde_yaml::Value,
    #[serde(default)]
    type_description_hash: Option<String>,
}

#[derive(Deserialize)]
struct RawFile {
    path: String,
    #[serde(default)]
    starting_time: Option<SinceEpoch>,
    #[serde(default)]
    duration: Option<Nanos>,
    #[serde(default)]
    message_count: u64,
}

fn qos_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => String::new(),
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Sequence(s) if s.is_empty() => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    }
}

impl BagMetadata {
    /// Parses metadata.yaml text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Bag(format!("{}: {reason}", path.display()));
        let root: Root = serde_yaml::from_str(text)
            .map_err(|e| bad(format!("not a rosbag2 metadata file: {e}")))?;
        let r = root.rosbag2_bagfile_information;
        if r.version == 0 || r.version > MAX_VERSION {
            return Err(bad(format!(
                "metadata version {} is not supported (this reader knows versions 1 to {MAX_VERSION})",
                r.version
            )));
        }
        let topics = r
            .topics_with_message_count
            .unwrap_or_default()
            .into_iter()
            .map(|t| TopicInfo {
                name: t.topic_metadata.name,
                type_name: t.topic_metadata.type_name,
                serialization_format: t.topic_metadata.serialization_format,
                offered_qos_profiles: qos_text(&t.topic_metadata.offered_qos_profiles),
                type_description_hash: t.topic_metadata.type_description_hash.unwrap_or_default(),
                message_count: t.message_count,
            })
            .collect();
        let files = r
            .files
            .unwrap_or_default()
            .into_iter()
            .map(|f| FileInfo {
                path: f.path,
                starting_time_ns: f.starting_time.map_or(0, |t| t.nanoseconds_since_epoch),
                duration_ns: f.duration.map_or(0, |d| d.nanoseconds),
                message_count: f.message_count,
            })
            .collect::<Vec<_>>();
        let mut relative_file_paths = r.relative_file_paths.unwrap_or_default();
        if relative_file_paths.is_empty() {
            relative_file_paths = files.iter().map(|f| f.path.clone()).collect();
        }
        Ok(BagMetadata {
            version: r.version,
            storage_identifier: r.storage_identifier,
            duration_ns: r.duration.map_or(0, |d| d.nanoseconds),
            starting_time_ns: r.starting_time.map_or(0, |t| t.nanoseconds_since_epoch),
            message_count: r.message_count,
            topics,
            compression_format: r.compression_format.unwrap_or_default(),
            compression_mode: r.compression_mode.unwrap_or_default(),
            relative_file_paths,
            files,
            ros_distro: r.ros_distro.unwrap_or_default(),
        })
    }

    /// Serializes as metadata.yaml of `self.version` (5 or 9; other versions are written in the
    /// v9 layout with their number). Field order follows rosbag2; the output depends only on
    /// the values, so equal bags get byte-identical files.
    pub fn to_yaml(&self) -> String {
        let v = self.version;
        let mut s = String::from("rosbag2_bagfile_information:\n");
        let q = yaml_quote;
        s += &format!("  version: {v}\n");
        s += &format!("  storage_identifier: {}\n", q(&self.storage_identifier));
        s += &format!("  duration:\n    nanoseconds: {}\n", self.duration_ns);
        s += &format!(
            "  starting_time:\n    nanoseconds_since_epoch: {}\n",
            self.starting_time_ns
        );
        s += &format!("  message_count: {}\n", self.message_count);
        if self.topics.is_empty() {
            s += "  topics_with_message_count: []\n";
        } else {
            s += "  topics_with_message_count:\n";
        }
        for t in &self.topics {
            s += "    - topic_metadata:\n";
            s += &format!("        name: {}\n", q(&t.name));
            s += &format!("        type: {}\n", q(&t.type_name));
            s += &format!(
                "        serialization_format: {}\n",
                q(&t.serialization_format)
            );
            if v >= 9 {
                if t.offered_qos_profiles.trim().is_empty() {
                    s += "        offered_qos_profiles: []\n";
                } else {
                    s += "        offered_qos_profiles:\n";
                    for line in t.offered_qos_profiles.lines() {
                        s += &format!("          {line}\n");
                    }
                }
            } else {
                s += &format!(
                    "        offered_qos_profiles: {}\n",
                    q(&t.offered_qos_profiles)
                );
            }
            if v >= 7 {
                s += &format!(
                    "        type_description_hash: {}\n",
                    q(&t.type_description_hash)
                );
            }
            s += &format!("      message_count: {}\n", t.message_count);
        }
        s += &format!("  compression_format: {}\n", q(&self.compression_format));
        s += &format!("  compression_mode: {}\n", q(&self.compression_mode));
        s += "  relative_file_paths:\n";
        for p in &self.relative_file_paths {
            s += &format!("    - {}\n", q(p));
        }
        if v >= 5 {
            s += "  files:\n";
            for f in &self.files {
                s += &format!("    - path: {}\n", q(&f.path));
                s += &format!(
                    "      starting_time:\n        nanoseconds_since_epoch: {}\n",
                    f.starting_time_ns
                );
                s += &format!("      duration:\n        nanoseconds: {}\n", f.duration_ns);
                s += &format!("      message_count: {}\n", f.message_count);
            }
        }
        if v >= 6 {
            s += "  custom_data: ~\n";
        }
        if v >= 8 {
            s += &format!("  ros_distro: {}\n", q(&self.ros_distro));
        }
        s
    }
}

/// A YAML scalar: plain when unambiguous, double-quoted (JSON escaping) otherwise.
fn yaml_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
        && !s.starts_with(['-', '.'])
        && serde_yaml::from_str::<serde_yaml::Value>(s)
            .is_ok_and(|v| matches!(v, serde_yaml::Value::String(_)));
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(version: u32) -> BagMetadata {
        BagMetadata {
            version,
            storage_identifier: "mcap".into(),
            duration_ns: 10,
            starting_time_ns: 5,
            message_count: 3,
            topics: vec![TopicInfo {
                name: "/cam".into(),
                type_name: "sensor_msgs/msg/Image".into(),
                serialization_format: "cdr".into(),
                offered_qos_profiles: if version >= 9 {
                    "- history: keep_last\n  depth: 5\n".into()
                } else {
                    "- history: 1\n  depth: 5".into()
                },
                type_description_hash: if version >= 7 {
                    "RIHS01_00".into()
                } else {
                    String::new()
                },
                message_count: 3,
            }],
            compression_format: String::new(),
            compression_mode: String::new(),
            relative_file_paths: vec!["b_0.mcap".into()],
            files: vec![FileInfo {
                path: "b_0.mcap".into(),
                starting_time_ns: 5,
                duration_ns: 10,
                message_count: 3,
            }],
            ros_distro: if version >= 8 {
                "jazzy".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn v5_and_v9_round_trip() {
        for v in [5, 9] {
            let m = sample(v);
            let text = m.to_yaml();
            let back = BagMetadata::parse(&text, Path::new("metadata.yaml")).unwrap();
            assert_eq!(back, m, "{text}");
        }
    }

    #[test]
    fn bad_metadata_is_a_clear_error() {
        let p = Path::new("x/metadata.yaml");
        let err = BagMetadata::parse("hello: 1\n", p).unwrap_err().to_string();
        assert!(err.contains("not a rosbag2 metadata file"), "{err}");
        assert!(err.contains("rosbag2_bagfile_information"), "{err}");
        let text = sample(9).to_yaml().replace("version: 9", "version: 12");
        let err = BagMetadata::parse(&text, p).unwrap_err().to_string();
        assert!(
            err.contains("metadata version 12 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(yaml_quote("/camera/image_raw"), "/camera/image_raw");
        assert_eq!(yaml_quote(""), "\"\"");
        assert_eq!(yaml_quote("true"), "\"true\"");
        assert_eq!(yaml_quote("12"), "\"12\"");
        assert_eq!(yaml_quote("a: b"), "\"a: b\"");
    }
}
