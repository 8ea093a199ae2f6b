//! Writing rosbag2 bags (MCAP or sqlite3, metadata.yaml v9 or v5), as `ros2 bag record` on
//! Jazzy (v9) or Humble (v5) would. The output depends only on what is written: two writes of
//! the same messages give byte-identical bags.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::metadata::{BagMetadata, FileInfo, TopicInfo};
use super::msgs;
use super::reader::Storage;
use crate::error::{Error, Result};

/// How to write a bag.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub storage: Storage,
    /// metadata.yaml version: 9 (Jazzy, default) or 5 (Humble).
    pub version: u32,
    /// `ros_distro` written for v8+.
    pub ros_distro: String,
    /// zstd-compress MCAP chunks (rosbag2's default). Ignored for sqlite3.
    pub mcap_compression: bool,
    /// Replace an existing bag folder at the path (otherwise that is an error, as in rosbag2).
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            storage: Storage::Mcap,
            version: 9,
            ros_distro: "jazzy".into(),
            mcap_compression: true,
            overwrite: false,
        }
    }
}

enum Backend {
    Mcap {
        writer: Box<mcap::Writer<BufWriter<std::fs::File>>>,
        channels: Vec<u16>,
        sequence: u32,
    },
    Sqlite {
        conn: rusqlite::Connection,
    },
}

/// Writes one bag folder: `<dir>/<name>_0.<ext>` + `<dir>/metadata.yaml` on [`BagWriter::finish`].
pub struct BagWriter {
    dir: PathBuf,
    file_name: String,
    opts: WriterOptions,
    topics: Vec<TopicInfo>,
    backend: Backend,
    first: Option<i64>,
    last: i64,
    count: u64,
}

fn qos_for(version: u32) -> String {
    // A reliable, keep-last publisher (what the node and the generator offer).
    if version >= 9 {
        "- history: keep_last\n  depth: 10\n  reliability: reliable\n  durability: volatile\n  \
         deadline:\n    sec: 9223372036\n    nsec: 854775807\n  lifespan:\n    sec: 9223372036\n    \
         nsec: 854775807\n  liveliness: automatic\n  liveliness_lease_duration:\n    sec: 9223372036\n    \
         nsec: 854775807\n  avoid_ros_namespace_conventions: false\n"
            .into()
    } else {
        "- history: 1\n  depth: 10\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 2147483647\n    \
         nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n  \
         liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n  \
         avoid_ros_namespace_conventions: false"
            .into()
    }
}

impl BagWriter {
    /// Creates the bag folder `dir` (its last component names the storage file).
    pub fn create(dir: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if opts.version != 5 && opts.version != 9 {
            return Err(Error::Bag(format!(
                "can write metadata versions 5 and 9, not {}",
                opts.version
            )));
        }
        if dir.exists() {
            if !opts.overwrite {
                return Err(Error::Bag(format!(
                    "{}: output bag already exists (remove it or pass --overwrite)",
                    dir.display()
                )));
            }
            if !dir.join("metadata.yaml").is_file()
                && dir.read_dir().is_ok_and(|mut d| d.next().is_some())
            {
                return Err(Error::Bag(format!(
                    "{}: refusing to overwrite a non-empty folder that is not a bag",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let stem = dir
            .file_name()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("bag")
            .to_string();
        let file_name = format!("{stem}_0.{}", opts.storage.extension());
        let path = dir.join(&file_name);
        let backend = match opts.storage {
            Storage::Mcap => {
                let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
                let wo = mcap::WriteOptions::new()
                    .profile("ros2")
                    .library(format!("pi0_mps-{}", env!("CARGO_PKG_VERSION")))
                    .compression(if opts.mcap_compression {
                        Some(mcap::Compression::Zstd)
                    } else {
                        None
                    });
                let writer = wo
                    .create(BufWriter::new(f))
                    .map_err(|e| Error::Bag(format!("{}: {e}", path.display())))?;
                Backend::Mcap {
                    writer: Box::new(writer),
                    channels: Vec::new(),
                    sequence: 0,
                }
            }
            Storage::Sqlite3 => {
                let conn = rusqlite::Connection::open(&path)
                    .map_err(|e| Error::Bag(format!("{}: {e}", path.display())))?;
                let v9 = opts.version >= 9;
                let hash_col = if v9 {
                    ",\n  type_description_hash TEXT NOT NULL"
                } else {
                    ""
                };
                let mut sql = format!(
                    "PRAGMA journal_mode=MEMORY;\nPRAGMA synchronous=OFF;\n\
                     CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);\n\
                     CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL, metadata TEXT NOT NULL);\n\
                     CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, \
                     serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL{hash_col});\n"
                );
                if v9 {
                    sql += "CREATE TABLE message_definitions(id INTEGER PRIMARY KEY, topic_type TEXT NOT NULL, \
                            encoding TEXT NOT NULL, encoded_message_definition TEXT NOT NULL, \
                            type_description_hash TEXT NOT NULL);\n";
                }
                sql += "CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, \
                        timestamp INTEGER NOT NULL, data BLOB NOT NULL);\n\
                        CREATE INDEX timestamp_idx ON messages (timestamp ASC);\nBEGIN;\n";
                conn.execute_batch(&sql)
                    .map_err(|e| Error::Bag(format!("{}: {e}", path.display())))?;
                conn.execute(
                    "INSERT INTO schema(schema_version, ros_distro) VALUES (?1, ?2)",
                    rusqlite::params![if v9 { 4 } else { 3 }, opts.ros_distro],
                )
                .map_err(|e| Error::Bag(format!("{}: {e}", path.display())))?;
                Backend::Sqlite { conn }
            }
        };
        Ok(BagWriter {
            dir,
            file_name,
            opts,
            topics: Vec::new(),
            backend,
            first: None,
            last: 0,
            count: 0,
        })
    }

    /// Adds a topic (CDR serialization) and returns its id for [`BagWriter::write`]. Known types
    /// (see [`msgs`]) get their schema text and type hash; others are written without.
    pub fn add_topic(&mut self, name: &str, type_name: &str) -> Result<usize> {
        if self.topics.iter().any(|t| t.name == name) {
            return Err(Error::Bag(format!("topic `{name}` added twice")));
        }
        let qos = qos_for(self.opts.version);
        let hash = if self.opts.version >= 9 {
            msgs::type_hash(type_name).unwrap_or("").to_string()
        } else {
            String::new()
        };
        let err = |e: String| Error::Bag(format!("{}: {e}", self.dir.display()));
        match &mut self.backend {
            Backend::Mcap {
                writer, channels, ..
            } => {
                let def = msgs::definition(type_name).unwrap_or_default();
                let schema = writer
                    .add_schema(type_name, "ros2msg", def.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                let mut meta = BTreeMap::new();
                meta.insert("offered_qos_profiles".to_string(), qos.clone());
                if !hash.is_empty() {
                    meta.insert("topic_type_hash".to_string(), hash.clone());
                }
                let ch = writer
                    .add_channel(schema, name, "cdr", &meta)
                    .map_err(|e| err(e.to_string()))?;
                channels.push(ch);
            }
            Backend::Sqlite { conn } => {
                let id = self.topics.len() as i64 + 1;
                if self.opts.version >= 9 {
                    conn.execute(
                        "INSERT INTO topics(id, name, type, serialization_format, offered_qos_profiles, \
                         type_description_hash) VALUES (?1, ?2, ?3, 'cdr', ?4, ?5)",
                        rusqlite::params![id, name, type_name, qos, hash],
                    )
                    .map_err(|e| err(e.to_string()))?;
                    let known = self
                        .topics
                        .iter()
                        .any(|t: &TopicInfo| t.type_name == type_name);
                    if !known {
                        conn.execute(
                            "INSERT INTO message_definitions(topic_type, encoding, \
                             encoded_message_definition, type_description_hash) VALUES (?1, ?2, ?3, ?4)",
                            rusqlite::params![
                                type_name,
                                "ros2msg",
                                msgs::definition(type_name).unwrap_or_default(),
                                hash
                            ],
                        )
                        .map_err(|e| err(e.to_string()))?;
                    }
                } else {
                    conn.execute(
                        "INSERT INTO topics(id, name, type, serialization_format, offered_qos_profiles) \
                         VALUES (?1, ?2, ?3, 'cdr', ?4)",
                        rusqlite::params![id, name, type_name, qos],
                    )
                    .map_err(|e| err(e.to_string()))?;
                }
            }
        }
        self.topics.push(TopicInfo {
            name: name.to_string(),
            type_name: type_name.to_string(),
            serialization_format: "cdr".into(),
            offered_qos_profiles: qos,
            type_description_hash: hash,
            message_count: 0,
        });
        Ok(self.topics.len() - 1)
    }

    /// Writes one CDR payload (encapsulation header included) at `timestamp` (ns since epoch).
    pub fn write(&mut self, topic: usize, timestamp: i64, data: &[u8]) -> Result<()> {
        if topic >= self.topics.len() {
            return Err(Error::Bag(format!("write to unknown topic id {topic}")));
        }
        if timestamp < 0 {
            return Err(Error::Bag(format!(
                "negative timestamp {timestamp} on `{}`",
                self.topics[topic].name
            )));
        }
        let err = |e: String| Error::Bag(format!("{}: {e}", self.dir.display()));
        match &mut self.backend {
            Backend::Mcap {
                writer,
                channels,
                sequence,
            } => {
                *sequence = sequence.wrapping_add(1);
                writer
                    .write_to_known_channel(
                        &mcap::records::MessageHeader {
                            channel_id: channels[topic],
                            sequence: *sequence,
                            log_time: timestamp as u64,
                            publish_time: timestamp as u64,
                        },
                        data,
                    )
                    .map_err(|e| err(e.to_string()))?;
            }
            Backend::Sqlite { conn } => {
                conn.prepare_cached(
                    "INSERT INTO messages(topic_id, timestamp, data) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut st| st.execute(rusqlite::params![topic as i64 + 1, timestamp, data]))
                .map_err(|e| err(e.to_string()))?;
            }
        }
        self.topics[topic].message_count += 1;
        self.count += 1;
        self.first = Some(self.first.map_or(timestamp, |f| f.min(timestamp)));
        self.last = self.last.max(timestamp);
        Ok(())
    }

    /// Closes the storage file and writes metadata.yaml; returns the metadata written.
    pub fn finish(self) -> Result<BagMetadata> {
        let start = self.first.unwrap_or(0);
        let duration = (self.last - start).max(0) as u64;
        let meta = BagMetadata {
            version: self.opts.version,
            storage_identifier: self.opts.storage.identifier().into(),
            duration_ns: duration,
            starting_time_ns: start,
            message_count: self.count,
            topics: self.topics.clone(),
            compression_format: String::new(),
            compression_mode: String::new(),
            relative_file_paths: vec![self.file_name.clone()],
            files: vec![FileInfo {
                path: self.file_name.clone(),
                starting_time_ns: start,
                duration_ns: duration,
                message_count: self.count,
            }],
            ros_distro: if self.opts.version >= 8 {
                self.opts.ros_distro.clone()
            } else {
                String::new()
            },
        };
        let yaml = meta.to_yaml();
        let err = |e: String| Error::Bag(format!("{}: {e}", self.dir.display()));
        match self.backend {
            Backend::Mcap { mut writer, .. } => {
                let mut m = BTreeMap::new();
                m.insert("serialized_metadata".to_string(), yaml.clone());
                writer
                    .write_metadata(&mcap::records::Metadata {
                        name: "rosbag2".into(),
                        metadata: m,
                    })
                    .map_err(|e| err(e.to_string()))?;
                writer.finish().map_err(|e| err(e.to_string()))?;
                let inner = writer.into_inner();
                inner
                    .into_inner()
                    .map_err(|e| err(e.to_string()))?
                    .sync_all()
                    .map_err(|e| err(e.to_string()))?;
            }
            Backend::Sqlite { conn } => {
                conn.execute(
                    "INSERT INTO metadata(metadata_version, metadata) VALUES (?1, ?2)",
                    rusqlite::params![self.opts.version, yaml],
                )
                .map_err(|e| err(e.to_string()))?;
                conn.execute_batch("COMMIT;")
                    .map_err(|e| err(e.to_string()))?;
                conn.close().map_err(|(_, e)| err(e.to_string()))?;
            }
        }
        let mpath = self.dir.join("metadata.yaml");
        std::fs::write(&mpath, yaml).map_err(|e| Error::io(&mpath, e))?;
        Ok(meta)
    }
}
