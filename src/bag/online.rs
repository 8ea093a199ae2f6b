//! Online replay (`pi0-replay play`, `ros` feature): publishes a bag's topics into the ROS graph
//! at the recorded pace, where `ros2 bag play` is not installed, and can record the node's
//! action chunks into a bag. The recorded CDR bytes are published unchanged
//! (`rcl_publish_serialized_message`), so subscribers get exactly what was recorded.
//!
//! Same behaviour as tests/ros/bag_play.py (the Python route, which needs only rclpy):
//! `--rate`, `--loop`, `--remap`, `--restamp`, `--record`, and the lockstep `--step-topic`
//! that waits for one answer per message of a topic so that a slow node answers every
//! observation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};

use super::msgs;
use super::reader::Bag;
use super::writer::{BagWriter, WriterOptions};
use crate::error::{Error, Result};

/// How to play.
#[derive(Clone, Debug)]
pub struct PlayOptions {
    /// Speed factor (2 = twice as fast); 0 = as fast as possible.
    pub rate: f64,
    /// Times to play the bag (the stamps of later loops continue after the bag's span).
    pub loops: usize,
    /// (bag topic, published topic).
    pub remaps: Vec<(String, String)>,
    /// Only these bag topics (all when empty).
    pub topics: Vec<String>,
    /// Best-effort publishers (default reliable); keep-last 100 either way.
    pub best_effort: bool,
    /// Shift header stamps so they are fresh at publish time (nodes with an age limit).
    pub restamp: bool,
    /// How long to wait for each published topic to get a subscriber.
    pub wait_subscribers: Duration,
    /// Record this `trajectory_msgs/JointTrajectory` topic into `record_out`.
    pub record: Option<(String, PathBuf)>,
    /// After playing, wait for this many recorded messages (or `record_timeout`).
    pub expect: Option<usize>,
    pub record_timeout: Duration,
    /// Lockstep on this bag topic: wait `settle` before each of its messages and, after
    /// publishing it, for one more recorded message (or `step_timeout`).
    pub step_topic: Option<String>,
    pub step_timeout: Duration,
    pub settle: Duration,
}

impl Default for PlayOptions {
    fn default() -> Self {
        PlayOptions {
            rate: 1.0,
            loops: 1,
            remaps: Vec::new(),
            topics: Vec::new(),
            best_effort: false,
            restamp: false,
            wait_subscribers: Duration::from_secs(60),
            record: None,
            expect: None,
            record_timeout: Duration::from_secs(120),
            step_topic: None,
            step_timeout: Duration::from_secs(120),
            settle: Duration::from_millis(50),
        }
    }
}

/// What a play did.
#[derive(Clone, Debug, Default)]
pub struct PlaySummary {
    pub published: u64,
    pub recorded: u64,
    /// Lockstep messages that got no answer in time.
    pub step_timeouts: u64,
    /// Topics that never got a subscriber.
    pub unmatched: Vec<String>,
}

/// Shifts the `header.stamp` of a payload that starts with a `std_msgs/Header` by `shift_ns`.
pub fn restamp(data: &mut [u8], shift_ns: i64) -> Result<()> {
    if data.len() < 12 {
        return Err(Error::Bag(
            "payload too short to hold a header stamp".into(),
        ));
    }
    let little = match (data[0], data[1]) {
        (0, 1) => true,
        (0, 0) => false,
        (a, b) => {
            return Err(Error::Bag(format!(
                "unsupported CDR encapsulation {a:02x} {b:02x}"
            )))
        }
    };
    let rd = |b: [u8; 4]| {
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let sec = rd(data[4..8].try_into().expect("4 bytes")) as i32;
    let nsec = rd(data[8..12].try_into().expect("4 bytes"));
    let t = msgs::Time { sec, nanosec: nsec }.to_nanos() + shift_ns;
    let n = msgs::Time::from_nanos(t);
    let wr = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    data[4..8].copy_from_slice(&wr(n.sec as u32));
    data[8..12].copy_from_slice(&wr(n.nanosec));
    Ok(())
}

fn has_header(type_name: &str) -> bool {
    msgs::definition(type_name).is_some_and(|d| d.starts_with("std_msgs/Header header\n"))
}

fn ros_err(what: &str, e: r2r::Error) -> Error {
    Error::Bag(format!("{what}: {e}"))
}

struct Recorder<S> {
    stream: S,
    got: Vec<(i64, Vec<u8>)>,
}

fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl<S: Stream<Item = Vec<u8>> + Unpin> Recorder<S> {
    fn drain(&mut self) {
        while let Some(Some(m)) = self.stream.next().now_or_never() {
            self.got.push((wall_ns(), m));
        }
    }
}

/// Plays `bag` (see [`PlayOptions`]). The ROS context is created here; `--ros-args` of the
/// process (remaps, domain, ...) apply as for any rcl node.
pub fn play(bag: &Bag, opts: &PlayOptions) -> Result<PlaySummary> {
    if !(opts.rate >= 0.0 && opts.rate.is_finite()) || opts.loops == 0 {
        return Err(Error::Bag("--rate must be >= 0 and --loop >= 1".into()));
    }
    for t in &opts.topics {
        if bag.topic_index(t).is_none() {
            return Err(Error::Bag(format!("topic `{t}` is not in the bag")));
        }
    }
    let selected: Vec<usize> = (0..bag.topics.len())
        .filter(|&i| opts.topics.is_empty() || opts.topics.contains(&bag.topics[i].name))
        .collect();
    let ctx = r2r::Context::create().map_err(|e| ros_err("rcl init", e))?;
    let mut node =
        r2r::Node::create(ctx, "pi0_bag_play", "").map_err(|e| ros_err("create node", e))?;
    let qos = if opts.best_effort {
        r2r::QosProfile::default().keep_last(100).best_effort()
    } else {
        r2r::QosProfile::default().keep_last(100).reliable()
    };
    let mut pubs: Vec<Option<r2r::PublisherUntyped>> =
        (0..bag.topics.len()).map(|_| None).collect();
    for &i in &selected {
        let t = &bag.topics[i];
        let name = opts
            .remaps
            .iter()
            .find(|(from, _)| *from == t.name)
            .map_or(t.name.as_str(), |(_, to)| to.as_str());
        pubs[i] = Some(
            node.create_publisher_untyped(name, &t.type_name, qos.clone())
                .map_err(|e| ros_err(&format!("publisher {name} [{}]", t.type_name), e))?,
        );
    }
    let mut rec = match &opts.record {
        Some((topic, _)) => Some(Recorder {
            stream: node
                .subscribe_raw(
                    topic,
                    msgs::JOINT_TRAJECTORY,
                    r2r::QosProfile::default().keep_last(1000).reliable(),
                )
                .map_err(|e| ros_err(&format!("subscription {topic}"), e))?,
            got: Vec::new(),
        }),
        None => None,
    };
    if (opts.expect.is_some() || opts.step_topic.is_some()) && rec.is_none() {
        return Err(Error::Bag("--expect and --step-topic need --record".into()));
    }
    let pump = |node: &mut r2r::Node, rec: &mut Option<Recorder<_>>, d: Duration| {
        let end = Instant::now() + d;
        loop {
            node.spin_once(Duration::from_millis(1));
            if let Some(r) = rec.as_mut() {
                r.drain();
            }
            if Instant::now() >= end {
                break;
            }
        }
    };
    let count = |rec: &Option<Recorder<_>>| rec.as_ref().map_or(0, |r| r.got.len());

    let mut summary = PlaySummary::default();
    // Discovery.
    for &i in &selected {
        let p = pubs[i].as_ref().expect("selected");
        let end = Instant::now() + opts.wait_subscribers;
        while p.get_inter_process_subscription_count().unwrap_or(0) == 0 && Instant::now() < end {
            pump(&mut node, &mut rec, Duration::from_millis(20));
        }
        if p.get_inter_process_subscription_count().unwrap_or(0) == 0 {
            log::warn!(
                "no subscriber on {} after {:?}",
                bag.topics[i].name,
                opts.wait_subscribers
            );
            summary.unmatched.push(bag.topics[i].name.clone());
        }
    }
    pump(&mut node, &mut rec, Duration::from_millis(300));

    let names: Vec<&str> = selected
        .iter()
        .map(|&i| bag.topics[i].name.as_str())
        .collect();
    let step = opts.step_topic.as_deref().and_then(|t| bag.topic_index(t));
    if opts.step_topic.is_some() && step.is_none() {
        return Err(Error::Bag(format!(
            "--step-topic {}: not in the bag",
            opts.step_topic.as_deref().unwrap_or("")
        )));
    }
    let mut start = Instant::now();
    let mut first: Option<i64> = None;
    let mut shift = 0i64;
    let mut offset = 0i64;
    let mut span = 0i64;
    for _ in 0..opts.loops {
        bag.for_each(Some(&names), |m| {
            let f = *first.get_or_insert_with(|| {
                shift = wall_ns() - m.timestamp;
                m.timestamp
            });
            let rel = m.timestamp - f + offset;
            span = span.max(m.timestamp - f);
            if opts.rate > 0.0 {
                let due = start + Duration::from_secs_f64((rel.max(0) as f64) * 1e-9 / opts.rate);
                let now = Instant::now();
                if due > now {
                    pump(&mut node, &mut rec, due - now);
                }
            }
            let is_step = step == Some(m.topic);
            if is_step {
                pump(&mut node, &mut rec, opts.settle);
            }
            let before = count(&rec);
            let mut data = m.data;
            let ty = &bag.topics[m.topic].type_name;
            if opts.restamp && has_header(ty) {
                restamp(&mut data, shift + offset)?;
            }
            pubs[m.topic]
                .as_ref()
                .expect("selected")
                .publish_raw(&data)
                .map_err(|e| ros_err(&format!("publish on {}", bag.topics[m.topic].name), e))?;
            summary.published += 1;
            if is_step {
                let end = Instant::now() + opts.step_timeout;
                while count(&rec) <= before && Instant::now() < end {
                    pump(&mut node, &mut rec, Duration::from_millis(5));
                }
                if count(&rec) <= before {
                    log::warn!(
                        "no answer within {:?} after the message at {} ns on {}",
                        opts.step_timeout,
                        m.timestamp,
                        bag.topics[m.topic].name
                    );
                    summary.step_timeouts += 1;
                }
                if opts.rate > 0.0 {
                    start = Instant::now()
                        - Duration::from_secs_f64((rel.max(0) as f64) * 1e-9 / opts.rate);
                }
                shift = wall_ns() - (m.timestamp + offset);
            }
            Ok(())
        })?;
        offset += span + 1;
    }
    if let Some(n) = opts.expect {
        let end = Instant::now() + opts.record_timeout;
        while count(&rec) < n && Instant::now() < end {
            pump(&mut node, &mut rec, Duration::from_millis(10));
        }
    }
    pump(&mut node, &mut rec, Duration::from_millis(200));
    summary.recorded = count(&rec) as u64;
    if let (Some((topic, out)), Some(r)) = (&opts.record, rec) {
        let mut w = BagWriter::create(out, WriterOptions::default())?;
        let t = w.add_topic(topic, msgs::JOINT_TRAJECTORY)?;
        for (ts, data) in &r.got {
            w.write(t, *ts, data)?;
        }
        w.finish()?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restamp_shifts_header_stamps_in_place() {
        let img = msgs::Image {
            header: msgs::Header {
                stamp: msgs::Time::from_nanos(1_999_999_999),
                frame_id: "c".into(),
            },
            height: 1,
            width: 1,
            encoding: "mono8".into(),
            step: 1,
            data: vec![7],
            ..Default::default()
        };
        let mut b = img.encode();
        restamp(&mut b, 2).unwrap();
        let back = msgs::Image::decode(&b).unwrap();
        assert_eq!(back.header.stamp.to_nanos(), 2_000_000_001);
        assert_eq!(back.data, vec![7]);
        assert!(has_header(msgs::JOINT_STATE) && has_header(msgs::IMAGE));
        assert!(restamp(&mut [0, 1, 0, 0], 1).is_err());
    }
}
