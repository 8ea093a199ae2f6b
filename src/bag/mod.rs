//! rosbag2 I/O without ROS: bag folders with metadata.yaml (v1–v9 read, v5/v9 written), MCAP
//! and sqlite3 storage, CDR codecs for the node's message types (`sensor_msgs/Image`,
//! `CompressedImage` (JPEG/PNG decoded), `JointState`, `trajectory_msgs/JointTrajectory`),
//! and the pieces of the `pi0-replay` tool: synthetic test bags ([`generate`]), offline replay
//! through the node's own pipeline ([`replay`]) and action-bag comparison ([`compare`]).
//!
//! ```text
//! pi0-replay info BAG
//! pi0-replay generate OUT [--storage mcap|sqlite3] [--metadata-version 9|5] [--frames N]
//!                         [--cameras /a,/b] [--width W --height H --encoding rgb8] ...
//! pi0-replay offline BAG -o OUT [--params-file pi0.yaml] [-p name:=value]...
//!                         [--checkpoint DIR] [--seed N] [--remap /node/topic:=/bag/topic]...
//! pi0-replay compare ACTUAL EXPECTED [--atol 1e-5] [--rtol 1e-4] [--ignore-stamps]
//! ```
//! Online replay into a running node (where `ros2 bag play` is missing):
//! `pi0-replay play BAG [--rate R] [--loop N] [--remap A:=B] [--restamp] [--record /pi0/actions
//! --record-out DIR]` (`online`, needs the `ros` feature), or the same with the rclpy script
//! `tests/ros/bag_play.py`; both publish the recorded CDR bytes unchanged.
//!
//! ```no_run
//! use pi0_mps::bag::{msgs::SensorMsg, Bag};
//! let bag = Bag::open("my_bag")?;
//! bag.for_each(Some(&["/camera/image_raw"]), |m| {
//!     if let SensorMsg::Image(img) = SensorMsg::decode(&bag.topic(&m).type_name, &m.data)? {
//!         println!("{} {}x{} {}", m.timestamp, img.width, img.height, img.encoding);
//!     }
//!     Ok(())
//! })?;
//! # Ok::<(), pi0_mps::Error>(())
//! ```

pub mod cdr;
pub mod compare;
pub mod compressed;
pub mod generate;
pub mod metadata;
pub mod msgs;
#[cfg(feature = "ros")]
pub mod online;
pub mod reader;
pub mod replay;
pub mod writer;

pub use metadata::{BagMetadata, FileInfo, TopicInfo};
pub use reader::{Bag, BagMessage, Storage};
pub use writer::{BagWriter, WriterOptions};
