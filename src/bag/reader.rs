//! Reading rosbag2 bags: a bag folder (metadata.yaml + storage files) or a single `.mcap` /
//! `.db3` file, MCAP or sqlite3 storage.
//!
//! Messages come out in timestamp order: sqlite3 files are queried `ORDER BY timestamp, id`
//! (as rosbag2 reads them); MCAP files are streamed in file order through a small reorder
//! window (rosbag2 and rosbags write in receive order, so the window rarely has work to do).
//! Files of a split bag are read one after the other. Nothing but the current message (and the
//! reorder window) is held in memory, so bags larger than memory replay fine.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use super::metadata::{BagMetadata, TopicInfo};
use crate::error::{Error, Result};

/// Storage plugins this crate reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    Mcap,
    Sqlite3,
}

impl Storage {
    /// From metadata.yaml's `storage_identifier`.
    pub fn from_identifier(id: &str) -> Result<Self> {
        match id {
            "mcap" => Ok(Storage::Mcap),
            "sqlite3" => Ok(Storage::Sqlite3),
            other => Err(Error::Bag(format!(
                "unknown storage_identifier `{other}` (supported: mcap, sqlite3)"
            ))),
        }
    }
    pub fn identifier(self) -> &'static str {
        match self {
            Storage::Mcap => "mcap",
            Storage::Sqlite3 => "sqlite3",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Storage::Mcap => "mcap",
            Storage::Sqlite3 => "db3",
        }
    }
}

impl std::str::FromStr for Storage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Storage::from_identifier(s)
    }
}

/// One serialized message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BagMessage {
    /// Index into [`Bag::topics`].
    pub topic: usize,
    /// Receive time, nanoseconds since the epoch (MCAP `log_time`, sqlite3 `timestamp`).
    pub timestamp: i64,
    /// The CDR payload, encapsulation header included.
    pub data: Vec<u8>,
}

/// An opened bag: its topics and files; messages are read with [`Bag::for_each`].
#[derive(Debug)]
pub struct Bag {
    /// The path given to [`Bag::open`].
    pub path: PathBuf,
    pub storage: Storage,
    /// `None` for a single storage file opened without a metadata.yaml.
    pub metadata: Option<BagMetadata>,
    /// Topics of metadata.yaml, then any that only the storage files name.
    pub topics: Vec<TopicInfo>,
    pub files: Vec<PathBuf>,
}

const REORDER_WINDOW: usize = 256;

/// A message in the MCAP reorder window: (timestamp, arrival order, topic, payload), min first.
type Windowed = std::cmp::Reverse<(i64, u64, usize, Vec<u8>)>;

impl Bag {
    /// Opens a bag folder (with metadata.yaml) or one `.mcap` / `.db3` file. Checks that the
    /// storage is known, that the files exist and are of that storage, and collects the topics;
    /// message payloads are only read by [`Bag::for_each`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        let (storage, metadata, files) = if meta.is_dir() {
            let mpath = path.join("metadata.yaml");
            let text = std::fs::read_to_string(&mpath).map_err(|e| {
                Error::Bag(format!(
                    "{}: not a rosbag2 bag folder: cannot read metadata.yaml ({e})",
                    path.display()
                ))
            })?;
            let m = BagMetadata::parse(&text, &mpath)?;
            let storage = Storage::from_identifier(&m.storage_identifier)
                .map_err(|e| Error::Bag(format!("{}: {}", mpath.display(), strip(&e))))?;
            if !m.compression_format.is_empty() || !m.compression_mode.is_empty() {
                return Err(Error::Bag(format!(
                    "{}: compressed bags (compression_format `{}`, compression_mode `{}`) are \
                     not supported; decompress it first (`ros2 bag convert`)",
                    path.display(),
                    m.compression_format,
                    m.compression_mode
                )));
            }
            if m.relative_file_paths.is_empty() {
                return Err(Error::Bag(format!(
                    "{}: metadata.yaml lists no storage files",
                    path.display()
                )));
            }
            let files = m
                .relative_file_paths
                .iter()
                .map(|rel| resolve(&path, rel))
                .collect::<Result<Vec<_>>>()?;
            (storage, Some(m), files)
        } else {
            let storage = match path.extension().and_then(|e| e.to_str()) {
                Some("mcap") => Storage::Mcap,
                Some("db3") => Storage::Sqlite3,
                _ => {
                    return Err(Error::Bag(format!(
                        "{}: unknown storage: expected a bag folder with metadata.yaml, a .mcap \
                         or a .db3 file",
                        path.display()
                    )))
                }
            };
            (storage, None, vec![path.clone()])
        };
        let mut bag = Bag {
            path,
            storage,
            topics: metadata
                .as_ref()
                .map(|m| m.topics.clone())
                .unwrap_or_default(),
            metadata,
            files,
        };
        for f in bag.files.clone() {
            let found = match storage {
                Storage::Mcap => mcap_topics(&f)?,
                Storage::Sqlite3 => sqlite_topics(&open_sqlite(&f)?, &f)?
                    .into_values()
                    .collect(),
            };
            for t in found {
                if bag.topic_index(&t.name).is_none() {
                    bag.topics.push(t);
                }
            }
        }
        Ok(bag)
    }

    /// The index of a topic by name.
    pub fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.name == name)
    }

    /// The topic of a message.
    pub fn topic(&self, msg: &BagMessage) -> &TopicInfo {
        &self.topics[msg.topic]
    }

    /// Calls `f` on every message of the selected topics (all when `topics` is `None`), in
    /// timestamp order. Stops at the first error, of the storage or of `f`.
    pub fn for_each(
        &self,
        topics: Option<&[&str]>,
        mut f: impl FnMut(BagMessage) -> Result<()>,
    ) -> Result<()> {
        let wanted: Vec<bool> = self
            .topics
            .iter()
            .map(|t| topics.is_none_or(|sel| sel.contains(&t.name.as_str())))
            .collect();
        for file in &self.files {
            match self.storage {
                Storage::Sqlite3 => self.sqlite_messages(file, &wanted, &mut f)?,
                Storage::Mcap => self.mcap_messages(file, &wanted, &mut f)?,
            }
        }
        Ok(())
    }

    /// Every message of the selected topics, in memory (for small bags: action bags, tests).
    pub fn read_all(&self, topics: Option<&[&str]>) -> Result<Vec<BagMessage>> {
        let mut v = Vec::new();
        self.for_each(topics, |m| {
            v.push(m);
            Ok(())
        })?;
        Ok(v)
    }

    /// Messages per topic name as actually stored (compare with metadata's counts).
    pub fn count_messages(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        self.for_each(None, |m| {
            *counts.entry(self.topics[m.topic].name.clone()).or_insert(0) += 1;
            Ok(())
        })?;
        Ok(counts)
    }

    fn sqlite_messages(
        &self,
        file: &Path,
        wanted: &[bool],
        f: &mut dyn FnMut(BagMessage) -> Result<()>,
    ) -> Result<()> {
        let conn = open_sqlite(file)?;
        let ids: HashMap<i64, usize> = sqlite_topics(&conn, file)?
            .into_iter()
            .filter_map(|(id, t)| self.topic_index(&t.name).map(|i| (id, i)))
            .collect();
        let sql_err = |e: rusqlite::Error| sqlite_error(file, e);
        let mut stmt = conn
            .prepare("SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id")
            .map_err(sql_err)?;
        let mut rows = stmt.query([]).map_err(sql_err)?;
        while let Some(row) = rows.next().map_err(sql_err)? {
            let topic_id: i64 = row.get(0).map_err(sql_err)?;
            let Some(&topic) = ids.get(&topic_id) else {
                return Err(Error::Bag(format!(
                    "{}: a message refers to topic id {topic_id}, which the topics table lacks",
                    file.display()
                )));
            };
            if !wanted[topic] {
                continue;
            }
            let timestamp: i64 = row.get(1).map_err(sql_err)?;
            let data: Vec<u8> = row.get(2).map_err(sql_err)?;
            f(BagMessage {
                topic,
                timestamp,
                data,
            })?;
        }
        Ok(())
    }

    fn mcap_messages(
        &self,
        file: &Path,
        wanted: &[bool],
        f: &mut dyn FnMut(BagMessage) -> Result<()>,
    ) -> Result<()> {
        let map = map_file(file)?;
        let stream = mcap::MessageStream::new_with_options(
            &map,
            mcap::read::Options::ValidateChunkCrcs.into(),
        )
        .map_err(|e| mcap_error(file, e))?;
        // Min-heap on (timestamp, arrival order).
        let mut window: BinaryHeap<Windowed> = BinaryHeap::new();
        let mut arrival = 0u64;
        for msg in stream {
            let msg = msg.map_err(|e| mcap_error(file, e))?;
            let Some(topic) = self.topic_index(&msg.channel.topic) else {
                continue; // every channel was registered by `open`
            };
            if !wanted[topic] {
                continue;
            }
            let ts = i64::try_from(msg.log_time).map_err(|_| {
                Error::Bag(format!(
                    "{}: log_time {} does not fit in signed nanoseconds",
                    file.display(),
                    msg.log_time
                ))
            })?;
            window.push(std::cmp::Reverse((
                ts,
                arrival,
                topic,
                msg.data.into_owned(),
            )));
            arrival += 1;
            if window.len() > REORDER_WINDOW {
                let std::cmp::Reverse((timestamp, _, topic, data)) =
                    window.pop().expect("non-empty");
                f(BagMessage {
                    topic,
                    timestamp,
                    data,
                })?;
            }
        }
        while let Some(std::cmp::Reverse((timestamp, _, topic, data))) = window.pop() {
            f(BagMessage {
                topic,
                timestamp,
                data,
            })?;
        }
        Ok(())
    }
}

/// The error text without the "bag: " prefix, for re-wrapping with a path.
fn strip(e: &Error) -> String {
    match e {
        Error::Bag(s) => s.clone(),
        other => other.to_string(),
    }
}

fn resolve(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = dir.join(rel);
    if p.is_file() {
        return Ok(p);
    }
    // Old rosbag2 versions stored "<bag>/<bag>_0.db3" (relative to the parent folder).
    if let Some(name) = Path::new(rel).file_name() {
        let q = dir.join(name);
        if q.is_file() {
            return Ok(q);
        }
    }
    Err(Error::Bag(format!(
        "{}: storage file `{rel}` listed in metadata.yaml does not exist",
        dir.display()
    )))
}

fn map_file(file: &Path) -> Result<memmap2::Mmap> {
    let fd = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    // SAFETY: the bag file is opened read-only and is not expected to change while it is read;
    // a concurrent writer could at worst make the MCAP parser see inconsistent bytes, which it
    // reports as an error.
    unsafe { memmap2::Mmap::map(&fd) }.map_err(|e| Error::io(file, e))
}

fn mcap_error(file: &Path, e: mcap::McapError) -> Error {
    let hint = match e {
        mcap::McapError::BadMagic => " (not an MCAP file)",
        mcap::McapError::UnexpectedEof | mcap::McapError::UnexpectedEoc => {
            " (the file is truncated)"
        }
        mcap::McapError::BadChunkCrc { .. } => " (the data is damaged)",
        _ => "",
    };
    Error::Bag(format!("{}: corrupt MCAP file: {e}{hint}", file.display()))
}

fn sqlite_error(file: &Path, e: rusqlite::Error) -> Error {
    Error::Bag(format!(
        "{}: corrupt or unreadable sqlite3 bag: {e}",
        file.display()
    ))
}

fn open_sqlite(file: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    if !file.is_file() {
        return Err(Error::Bag(format!(
            "{}: no such storage file",
            file.display()
        )));
    }
    let conn = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_error(file, e))?;
    Ok(conn)
}

/// `topics` table rows by id.
fn sqlite_topics(conn: &rusqlite::Connection, file: &Path) -> Result<BTreeMap<i64, TopicInfo>> {
    let has_table = |name: &str| -> Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| sqlite_error(file, e))
    };
    if !has_table("topics")? || !has_table("messages")? {
        return Err(Error::Bag(format!(
            "{}: not a rosbag2 sqlite3 file (no `topics` / `messages` table)",
            file.display()
        )));
    }
    let cols: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('topics')")
            .map_err(|e| sqlite_error(file, e))?;
        let names = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sqlite_error(file, e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| sqlite_error(file, e));
        names?
    };
    let opt = |c: &str| {
        if cols.iter().any(|x| x == c) {
            c.to_string()
        } else {
            "''".to_string()
        }
    };
    let sql = format!(
        "SELECT id, name, type, serialization_format, {}, {} FROM topics ORDER BY id",
        opt("offered_qos_profiles"),
        opt("type_description_hash")
    );
    let mut st = conn.prepare(&sql).map_err(|e| sqlite_error(file, e))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                TopicInfo {
                    name: r.get(1)?,
                    type_name: r.get(2)?,
                    serialization_format: r.get(3)?,
                    offered_qos_profiles: r.get(4)?,
                    type_description_hash: r.get(5)?,
                    message_count: 0,
                },
            ))
        })
        .map_err(|e| sqlite_error(file, e))?
        .collect::<std::result::Result<BTreeMap<_, _>, _>>()
        .map_err(|e| sqlite_error(file, e));
    rows
}

/// Channels of an MCAP file as topics (from the summary when present, else by streaming).
fn mcap_topics(file: &Path) -> Result<Vec<TopicInfo>> {
    let map = map_file(file)?;
    let mut topics: Vec<TopicInfo> = Vec::new();
    let mut add = |c: &mcap::Channel| {
        if !topics.iter().any(|t| t.name == c.topic) {
            topics.push(TopicInfo {
                name: c.topic.clone(),
                type_name: c
                    .schema
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                serialization_format: c.message_encoding.clone(),
                offered_qos_profiles: c
                    .metadata
                    .get("offered_qos_profiles")
                    .cloned()
                    .unwrap_or_default(),
                type_description_hash: c
                    .metadata
                    .get("topic_type_hash")
                    .cloned()
                    .unwrap_or_default(),
                message_count: 0,
            });
        }
    };
    // A summary gives every channel without reading the data; a file without one (or a
    // truncated file, whose summary cannot be found) is streamed, which also validates it.
    match mcap::Summary::read(&map) {
        Ok(Some(summary)) => {
            let mut ids: Vec<_> = summary.channels.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                add(&summary.channels[&id]);
            }
        }
        Ok(None) | Err(_) => {
            let opts = mcap::read::Options::ValidateChunkCrcs.into();
            let stream = mcap::MessageStream::new_with_options(&map, opts)
                .map_err(|e| mcap_error(file, e))?;
            for msg in stream {
                add(&msg.map_err(|e| mcap_error(file, e))?.channel);
            }
        }
    }
    Ok(topics)
}
