//! Synthetic test bags: camera images (a seeded gradient with a moving square) and smooth
//! joint trajectories, written as MCAP or sqlite3 with metadata.yaml v9 or v5. The content
//! depends only on the options, so a generated bag is a reproducible replay input.

use std::path::Path;

use super::metadata::BagMetadata;
use super::msgs::{self, Header, Image, JointState, Time};
use super::writer::{BagWriter, WriterOptions};
use crate::error::{Error, Result};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub writer: WriterOptions,
    /// One `sensor_msgs/Image` topic per camera.
    pub camera_topics: Vec<String>,
    pub width: u32,
    pub height: u32,
    /// rgb8, bgr8, rgba8, bgra8 or mono8.
    pub encoding: String,
    /// Frames per camera.
    pub frames: usize,
    pub camera_hz: f64,
    /// Camera `i`'s frames are `i · camera_offset_ns` later than camera 0's (sync testing).
    pub camera_offset_ns: i64,
    pub joint_topic: String,
    pub joints: Vec<String>,
    pub joint_hz: f64,
    /// Time of camera 0's first frame (ns since epoch); joint states start one joint period
    /// earlier so that the first observation has one.
    pub start_ns: i64,
    pub seed: u64,
    /// Write the cameras as PNG `sensor_msgs/CompressedImage` (lossless) instead of raw images.
    pub png: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            writer: WriterOptions::default(),
            camera_topics: vec!["/camera/image_raw".into()],
            width: 32,
            height: 24,
            encoding: "rgb8".into(),
            frames: 5,
            camera_hz: 10.0,
            camera_offset_ns: 2_000_000,
            joint_topic: "/joint_states".into(),
            joints: (1..=7).map(|i| format!("joint{i}")).collect(),
            joint_hz: 50.0,
            start_ns: 1_700_000_000_000_000_000,
            seed: 0,
            png: false,
        }
    }
}

fn channels(encoding: &str) -> Result<usize> {
    Ok(match encoding {
        "rgb8" | "bgr8" => 3,
        "rgba8" | "bgra8" => 4,
        "mono8" => 1,
        other => {
            return Err(Error::Bag(format!(
                "cannot generate images of encoding `{other}` (rgb8, bgr8, rgba8, bgra8, mono8)"
            )))
        }
    })
}

/// A small deterministic mixer (splitmix64) for per-bag colours.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The synthetic frame `frame` of camera `camera` (RGB order; converted to `encoding`).
pub fn synthetic_image(
    opts: &GenerateOptions,
    camera: usize,
    frame: usize,
    stamp_ns: i64,
) -> Result<Image> {
    let ch = channels(&opts.encoding)?;
    let (w, h) = (opts.width as usize, opts.height as usize);
    if w == 0 || h == 0 {
        return Err(Error::Bag("image width and height must be positive".into()));
    }
    let c = mix(opts.seed ^ ((camera as u64) << 32));
    let base = [
        (c & 0xff) as u8,
        ((c >> 8) & 0xff) as u8,
        ((c >> 16) & 0xff) as u8,
    ];
    let side = (w.min(h) / 3).max(1);
    let sx = (frame * 3 + camera * 5) % w.saturating_sub(side).max(1);
    let sy = (frame * 2 + camera * 3) % h.saturating_sub(side).max(1);
    let mut data = Vec::with_capacity(w * h * ch);
    for y in 0..h {
        for x in 0..w {
            let inside = (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y);
            let rgb = if inside {
                [255 - base[0], 255 - base[1], 255 - base[2]]
            } else {
                [
                    base[0].wrapping_add((x * 255 / w) as u8),
                    base[1].wrapping_add((y * 255 / h) as u8),
                    base[2].wrapping_add((frame * 16) as u8),
                ]
            };
            match opts.encoding.as_str() {
                "rgb8" => data.extend_from_slice(&rgb),
                "bgr8" => data.extend_from_slice(&[rgb[2], rgb[1], rgb[0]]),
                "rgba8" => data.extend_from_slice(&[rgb[0], rgb[1], rgb[2], 255]),
                "bgra8" => data.extend_from_slice(&[rgb[2], rgb[1], rgb[0], 255]),
                _ => data.push(
                    ((rgb[0] as u32 * 77 + rgb[1] as u32 * 150 + rgb[2] as u32 * 29) >> 8) as u8,
                ),
            }
        }
    }
    Ok(Image {
        header: Header {
            stamp: Time::from_nanos(stamp_ns),
            frame_id: format!("camera{camera}"),
        },
        height: opts.height,
        width: opts.width,
        encoding: opts.encoding.clone(),
        is_bigendian: 0,
        step: (w * ch) as u32,
        data,
    })
}

/// The synthetic joint state at time `t_s` seconds after the start.
pub fn synthetic_joints(opts: &GenerateOptions, t_s: f64, stamp_ns: i64) -> JointState {
    let n = opts.joints.len();
    let phase = (mix(opts.seed) % 1000) as f64 / 1000.0;
    let f = |j: usize, d: usize| -> f64 {
        let w = 0.5 + 0.25 * j as f64;
        let p = phase + j as f64 * 0.7;
        match d {
            0 => 0.5 * (w * t_s + p).sin(),
            _ => 0.5 * w * (w * t_s + p).cos(),
        }
    };
    JointState {
        header: Header {
            stamp: Time::from_nanos(stamp_ns),
            frame_id: String::new(),
        },
        name: opts.joints.clone(),
        position: (0..n).map(|j| f(j, 0)).collect(),
        velocity: (0..n).map(|j| f(j, 1)).collect(),
        effort: Vec::new(),
    }
}

/// Writes the bag folder `dir`; returns its metadata.
pub fn generate_bag(dir: impl AsRef<Path>, opts: &GenerateOptions) -> Result<BagMetadata> {
    channels(&opts.encoding)?;
    let rate_ok = |hz: f64| hz > 0.0 && hz.is_finite();
    if !rate_ok(opts.camera_hz) || !rate_ok(opts.joint_hz) {
        return Err(Error::Bag("camera and joint rates must be positive".into()));
    }
    if opts.start_ns < 1_000_000_000 {
        return Err(Error::Bag(
            "start time must be at least 1 s after the epoch".into(),
        ));
    }
    let mut w = BagWriter::create(dir, opts.writer.clone())?;
    // (time, kind order: joints before cameras at equal times, camera index, frame index)
    let mut events: Vec<(i64, usize, usize)> = Vec::new();
    let cam_period = (1e9 / opts.camera_hz).round() as i64;
    let joint_period = (1e9 / opts.joint_hz).round() as i64;
    for c in 0..opts.camera_topics.len() {
        for k in 0..opts.frames {
            events.push((
                opts.start_ns + k as i64 * cam_period + c as i64 * opts.camera_offset_ns,
                1 + c,
                k,
            ));
        }
    }
    if !opts.joints.is_empty() {
        let end = opts.start_ns
            + opts.frames.saturating_sub(1) as i64 * cam_period
            + opts.camera_topics.len() as i64 * opts.camera_offset_ns;
        let mut t = opts.start_ns - joint_period;
        let mut k = 0;
        while t <= end {
            events.push((t, 0, k));
            t += joint_period;
            k += 1;
        }
    }
    events.sort_unstable();
    let cams: Vec<usize> = opts
        .camera_topics
        .iter()
        .map(|t| {
            let ty = if opts.png {
                msgs::COMPRESSED_IMAGE
            } else {
                msgs::IMAGE
            };
            w.add_topic(t, ty)
        })
        .collect::<Result<_>>()?;
    let joints = if opts.joints.is_empty() {
        None
    } else {
        Some(w.add_topic(&opts.joint_topic, msgs::JOINT_STATE)?)
    };
    for (t, kind, k) in events {
        if kind == 0 {
            let js = synthetic_joints(opts, (t - opts.start_ns) as f64 * 1e-9, t);
            w.write(joints.expect("joints present"), t, &js.encode())?;
        } else {
            let img = synthetic_image(opts, kind - 1, k, t)?;
            let data = if opts.png {
                to_png(&img)?.encode()
            } else {
                img.encode()
            };
            w.write(cams[kind - 1], t, &data)?;
        }
    }
    w.finish()
}

/// A raw 8-bit image as a PNG `sensor_msgs/CompressedImage` (format as image_transport writes
/// it: `"<encoding>; png compressed <encoding>"`). bgr8/bgra8 are stored in RGB order, as
/// OpenCV's encoder does.
pub fn to_png(img: &Image) -> Result<msgs::CompressedImage> {
    let (color, ch) = match img.encoding.as_str() {
        "rgb8" | "bgr8" => (png::ColorType::Rgb, 3),
        "rgba8" | "bgra8" => (png::ColorType::Rgba, 4),
        "mono8" => (png::ColorType::Grayscale, 1),
        other => return Err(Error::Bag(format!("cannot PNG-encode encoding `{other}`"))),
    };
    let (w, h) = (img.width as usize, img.height as usize);
    let mut pixels = Vec::with_capacity(w * h * ch);
    for row in img.data.chunks(img.step as usize).take(h) {
        for px in row[..w * ch].chunks_exact(ch) {
            if img.encoding.starts_with("bgr") {
                pixels.extend_from_slice(&[px[2], px[1], px[0]]);
                if ch == 4 {
                    pixels.push(px[3]);
                }
            } else {
                pixels.extend_from_slice(px);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, img.width, img.height);
        e.set_color(color);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e
            .write_header()
            .map_err(|e| Error::Bag(format!("PNG encoding: {e}")))?;
        wr.write_image_data(&pixels)
            .map_err(|e| Error::Bag(format!("PNG encoding: {e}")))?;
    }
    Ok(msgs::CompressedImage {
        header: img.header.clone(),
        format: format!("{0}; png compressed {0}", img.encoding),
        data: out,
    })
}
