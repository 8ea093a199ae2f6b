//! The ROS 2 messages the replay tool reads and writes, with their CDR codecs and the
//! `ros2msg` definitions that MCAP schemas carry (same text as rosbag2 / rosbags write).

use super::cdr::{CdrReader, CdrWriter};
use crate::error::{Error, Result};

pub const IMAGE: &str = "sensor_msgs/msg/Image";
pub const COMPRESSED_IMAGE: &str = "sensor_msgs/msg/CompressedImage";
pub const JOINT_STATE: &str = "sensor_msgs/msg/JointState";
pub const JOINT_TRAJECTORY: &str = "trajectory_msgs/msg/JointTrajectory";

/// `builtin_interfaces/Time` (also the layout of `builtin_interfaces/Duration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    /// From nanoseconds since the epoch (the bag's timestamps). Negative values floor.
    pub fn from_nanos(ns: i64) -> Self {
        Time {
            sec: ns.div_euclid(1_000_000_000) as i32,
            nanosec: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
    pub fn to_nanos(self) -> i64 {
        self.sec as i64 * 1_000_000_000 + self.nanosec as i64
    }
    fn read(r: &mut CdrReader, field: &str) -> Result<Self> {
        Ok(Time {
            sec: r.i32(field)?,
            nanosec: r.u32(field)?,
        })
    }
    fn write(&self, w: &mut CdrWriter) {
        w.i32(self.sec);
        w.u32(self.nanosec);
    }
}

/// `std_msgs/Header`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

impl Header {
    fn read(r: &mut CdrReader) -> Result<Self> {
        Ok(Header {
            stamp: Time::read(r, "header.stamp")?,
            frame_id: r.string("header.frame_id")?,
        })
    }
    fn write(&self, w: &mut CdrWriter) {
        self.stamp.write(w);
        w.string(&self.frame_id);
    }
}

/// `sensor_msgs/Image`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    pub is_bigendian: u8,
    pub step: u32,
    pub data: Vec<u8>,
}

impl Image {
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = CdrReader::new(buf, IMAGE)?;
        Ok(Image {
            header: Header::read(&mut r)?,
            height: r.u32("height")?,
            width: r.u32("width")?,
            encoding: r.string("encoding")?,
            is_bigendian: r.u8("is_bigendian")?,
            step: r.u32("step")?,
            data: r.bytes("data")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = CdrWriter::with_capacity(self.data.len() + 64 + self.header.frame_id.len());
        self.header.write(&mut w);
        w.u32(self.height);
        w.u32(self.width);
        w.string(&self.encoding);
        w.u8(self.is_bigendian);
        w.u32(self.step);
        w.bytes(&self.data);
        w.finish()
    }
}

/// `sensor_msgs/CompressedImage`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompressedImage {
    pub header: Header,
    /// "jpeg", "png", or the image_transport form "rgb8; jpeg compressed bgr8".
    pub format: String,
    pub data: Vec<u8>,
}

impl CompressedImage {
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = CdrReader::new(buf, COMPRESSED_IMAGE)?;
        Ok(CompressedImage {
            header: Header::read(&mut r)?,
            format: r.string("format")?,
            data: r.bytes("data")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = CdrWriter::with_capacity(self.data.len() + 64);
        self.header.write(&mut w);
        w.string(&self.format);
        w.bytes(&self.data);
        w.finish()
    }
}

/// `sensor_msgs/JointState`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JointState {
    pub header: Header,
    pub name: Vec<String>,
    pub position: Vec<f64>,
    pub velocity: Vec<f64>,
    pub effort: Vec<f64>,
}

impl JointState {
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = CdrReader::new(buf, JOINT_STATE)?;
        Ok(JointState {
            header: Header::read(&mut r)?,
            name: r.strings("name")?,
            position: r.f64s("position")?,
            velocity: r.f64s("velocity")?,
            effort: r.f64s("effort")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = CdrWriter::new();
        self.header.write(&mut w);
        w.strings(&self.name);
        w.f64s(&self.position);
        w.f64s(&self.velocity);
        w.f64s(&self.effort);
        w.finish()
    }
}

/// `trajectory_msgs/JointTrajectoryPoint`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JointTrajectoryPoint {
    pub positions: Vec<f64>,
    pub velocities: Vec<f64>,
    pub accelerations: Vec<f64>,
    pub effort: Vec<f64>,
    /// `builtin_interfaces/Duration`.
    pub time_from_start: Time,
}

/// `trajectory_msgs/JointTrajectory`: how the node publishes an action chunk (one point per
/// action step, `positions` = the un-normalized action).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JointTrajectory {
    pub header: Header,
    pub joint_names: Vec<String>,
    pub points: Vec<JointTrajectoryPoint>,
}

impl JointTrajectory {
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = CdrReader::new(buf, JOINT_TRAJECTORY)?;
        let header = Header::read(&mut r)?;
        let joint_names = r.strings("joint_names")?;
        // Each point is at least 4 sequence counts + a Duration = 24 bytes.
        let n = r.count("points", 24)?;
        let mut points = Vec::with_capacity(n);
        for _ in 0..n {
            points.push(JointTrajectoryPoint {
                positions: r.f64s("points.positions")?,
                velocities: r.f64s("points.velocities")?,
                accelerations: r.f64s("points.accelerations")?,
                effort: r.f64s("points.effort")?,
                time_from_start: Time::read(&mut r, "points.time_from_start")?,
            });
        }
        Ok(JointTrajectory {
            header,
            joint_names,
            points,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = CdrWriter::with_capacity(
            64 + self
                .points
                .iter()
                .map(|p| 40 + 8 * p.positions.len())
                .sum::<usize>(),
        );
        self.header.write(&mut w);
        w.strings(&self.joint_names);
        w.count(self.points.len());
        for p in &self.points {
            w.f64s(&p.positions);
            w.f64s(&p.velocities);
            w.f64s(&p.accelerations);
            w.f64s(&p.effort);
            p.time_from_start.write(&mut w);
        }
        w.finish()
    }
}

const SEP: &str =
    "================================================================================\n";
const DEF_TIME: &str = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n";
const DEF_HEADER: &str = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n";

/// The `ros2msg` schema text of a known type (the top-level definition followed by every
/// dependency, as rosbag2 writes MCAP schemas), or `None` for a type this crate doesn't know.
pub fn definition(type_name: &str) -> Option<String> {
    let deps = format!("{SEP}{DEF_HEADER}{SEP}{DEF_TIME}");
    Some(match type_name {
        IMAGE => format!(
            "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n\
             uint8 is_bigendian\nuint32 step\nuint8[] data\n{deps}"
        ),
        COMPRESSED_IMAGE => {
            format!("std_msgs/Header header\nstring format\nuint8[] data\n{deps}")
        }
        JOINT_STATE => format!(
            "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\n\
             float64[] effort\n{deps}"
        ),
        JOINT_TRAJECTORY => format!(
            "std_msgs/Header header\nstring[] joint_names\n\
             trajectory_msgs/JointTrajectoryPoint[] points\n{deps}{SEP}\
             MSG: trajectory_msgs/JointTrajectoryPoint\nfloat64[] positions\nfloat64[] velocities\n\
             float64[] accelerations\nfloat64[] effort\nbuiltin_interfaces/Duration time_from_start\n\
             {SEP}MSG: builtin_interfaces/Duration\nint32 sec\nuint32 nanosec\n"
        ),
        _ => return None,
    })
}

/// The Jazzy type description hash (REP 2011 "RIHS01_…") of a known type, as written into
/// metadata.yaml v7+ and the sqlite3 `topics` table.
pub fn type_hash(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        IMAGE => "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
        COMPRESSED_IMAGE => {
            "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a"
        }
        JOINT_STATE => "RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e",
        JOINT_TRAJECTORY => {
            "RIHS01_179b33eba59d676f6d967ac71fe35e7ca2f64b2f3928f4a018cec115e213796e"
        }
        _ => return None,
    })
}

/// A decoded camera or joint message, as the replay consumes them.
#[derive(Clone, Debug, PartialEq)]
pub enum SensorMsg {
    Image(Image),
    CompressedImage(CompressedImage),
    JointState(JointState),
}

impl SensorMsg {
    /// Decodes a payload of one of the sensor types; other types are an error naming it.
    pub fn decode(type_name: &str, buf: &[u8]) -> Result<Self> {
        match type_name {
            IMAGE => Image::decode(buf).map(SensorMsg::Image),
            COMPRESSED_IMAGE => CompressedImage::decode(buf).map(SensorMsg::CompressedImage),
            JOINT_STATE => JointState::decode(buf).map(SensorMsg::JointState),
            other => Err(Error::Bag(format!(
                "message type `{other}` is not a camera or joint-state type (expected {IMAGE}, \
                 {COMPRESSED_IMAGE} or {JOINT_STATE})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "cam".into(),
        }
    }

    #[test]
    fn image_bytes_match_rosbags() {
        // rosbags 0.11.9 `serialize_cdr` of this Image (2×3 rgb8, data 0..18).
        let expected: Vec<u8> = [
            &[
                0u8, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, b'c', b'a', b'm', 0,
            ][..],
            &[
                2, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, b'r', b'g', b'b', b'8', 0, 0, 0, 0,
            ],
            &[9, 0, 0, 0, 18, 0, 0, 0],
            &(0u8..18).collect::<Vec<_>>(),
        ]
        .concat();
        let img = Image {
            header: header(),
            height: 2,
            width: 3,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 9,
            data: (0u8..18).collect(),
        };
        assert_eq!(img.encode(), expected);
        assert_eq!(Image::decode(&expected).unwrap(), img);
    }

    #[test]
    fn round_trips() {
        let js = JointState {
            header: header(),
            name: vec!["a".into(), "bc".into()],
            position: vec![1.0, -2.5],
            velocity: vec![],
            effort: vec![0.25],
        };
        assert_eq!(JointState::decode(&js.encode()).unwrap(), js);
        let ci = CompressedImage {
            header: header(),
            format: "png".into(),
            data: vec![1, 2, 3],
        };
        assert_eq!(CompressedImage::decode(&ci.encode()).unwrap(), ci);
        let jt = JointTrajectory {
            header: header(),
            joint_names: vec!["j0".into()],
            points: (0..3)
                .map(|i| JointTrajectoryPoint {
                    positions: vec![i as f64 * 0.5],
                    time_from_start: Time::from_nanos(i * 20_000_000),
                    ..Default::default()
                })
                .collect(),
        };
        assert_eq!(JointTrajectory::decode(&jt.encode()).unwrap(), jt);
    }

    #[test]
    fn truncated_payload_names_the_field() {
        let js = JointState {
            header: header(),
            name: vec!["a".into()],
            position: vec![1.0],
            ..Default::default()
        };
        let b = js.encode();
        let err = JointState::decode(&b[..b.len() - 12])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sensor_msgs/msg/JointState"), "{err}");
        assert!(err.contains("position"), "{err}");
    }

    #[test]
    fn time_from_nanos() {
        assert_eq!(
            Time::from_nanos(1_500_000_001),
            Time {
                sec: 1,
                nanosec: 500_000_001
            }
        );
        assert_eq!(Time::from_nanos(-1).to_nanos(), -1);
    }
}
