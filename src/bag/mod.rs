//! rosbag2 I/O without ROS: bag folders with metadata.yaml (v1–v9 read, v5/v9 written), MCAP
//! and sqlite3 storage, CDR codecs for the node's message types, and the pieces of the
//! `pi0-replay` tool: synthetic test bags ([`generate`]), offline replay through the node's
//! pipeline ([`replay`]) and action-bag comparison ([`compare`]).
//!
//! ```no_run
//! use pi0_mps::bag::{Bag, msgs::{self, SensorMsg}};
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
pub mod reader;
pub mod replay;
pub mod writer;

pub use metadata::{BagMetadata, FileInfo, TopicInfo};
pub use reader::{Bag, BagMessage, Storage};
pub use writer::{BagWriter, WriterOptions};
