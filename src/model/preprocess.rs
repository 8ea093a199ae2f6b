//! Camera frames → model input, as openpi prepares them:
//!
//! 1. ROS `sensor_msgs/Image` bytes (rgb8, bgr8, rgba8, bgra8, mono8; any size and row
//!    stride) → RGB (alpha dropped, gray replicated to three channels).
//! 2. `openpi_client.image_tools.resize_with_pad(img, 224, 224)` (used by openpi's
//!    `transforms.ResizeImages` and by its robot clients): a frame that already has the
//!    target size passes through untouched; otherwise
//!    `ratio = max(w / W, h / H)`, `rw = int(w / ratio)`, `rh = int(h / ratio)`, PIL
//!    `Image.resize((rw, rh), BILINEAR)` on uint8, pasted on a black canvas at
//!    (`int((W - rw) / 2)`, `int((H - rh) / 2)`), i.e. the extra row/column goes to the
//!    bottom/right.
//! 3. `uint8 → float32 / 255 * 2 - 1` (`model.Observation.from_dict`), so padding is −1.
//!
//! PIL's BILINEAR is not textbook bilinear interpolation: it is a separable triangle-filter
//! convolution whose support widens with the downscale factor (antialiasing), with fixed-point
//! coefficients (22 fraction bits) and rounding to uint8 after each pass (horizontal first).
//! [`resize_rgb8`] reproduces Pillow's `Resample.c` exactly as of Pillow 11–12 (what openpi's
//! lock file installs; tests compare with bytes Pillow 12.0 produced). Pillow 13 runs the
//! vertical pass first when the height shrinks by more than twice the width's shrink in pixels,
//! which moves some values by 1; letterboxing a frame into a square only meets that for frames
//! more than twice as tall as wide.

use crate::error::{Error, Result};

/// The ROS encodings accepted by [`image_to_model_input`].
pub const SUPPORTED_ENCODINGS: [&str; 5] = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"];

/// openpi's image side (`IMAGE_RESOLUTION`).
pub const MODEL_IMAGE_SIZE: usize = 224;

/// One camera frame as a ROS `sensor_msgs/Image` carries it.
#[derive(Clone, Copy, Debug)]
pub struct RawImage<'a> {
    pub width: usize,
    pub height: usize,
    /// ROS encoding name (`rgb8`, `bgr8`, `rgba8`, `bgra8`, `mono8`).
    pub encoding: &'a str,
    /// Bytes per row (≥ width × channels).
    pub step: usize,
    pub data: &'a [u8],
}

/// Bytes per pixel and the byte offsets of R, G, B within a pixel.
fn layout(encoding: &str) -> Option<(usize, [usize; 3])> {
    Some(match encoding {
        "rgb8" => (3, [0, 1, 2]),
        "bgr8" => (3, [2, 1, 0]),
        "rgba8" => (4, [0, 1, 2]),
        "bgra8" => (4, [2, 1, 0]),
        "mono8" => (1, [0, 0, 0]),
        _ => return None,
    })
}

/// A validated view of the source pixels.
struct Source<'a> {
    width: usize,
    height: usize,
    step: usize,
    channels: usize,
    offsets: [usize; 3],
    data: &'a [u8],
}

impl<'a> Source<'a> {
    fn new(img: &RawImage<'a>) -> Result<Self> {
        let (channels, offsets) = layout(img.encoding).ok_or_else(|| {
            Error::Image(format!(
                "unsupported encoding `{}` (supported: {})",
                img.encoding,
                SUPPORTED_ENCODINGS.join(", ")
            ))
        })?;
        if img.width == 0 || img.height == 0 {
            return Err(Error::Image(format!(
                "empty image ({}×{})",
                img.width, img.height
            )));
        }
        let row = img
            .width
            .checked_mul(channels)
            .ok_or_else(|| Error::Image(format!("width {} is too large", img.width)))?;
        if img.step < row {
            return Err(Error::Image(format!(
                "step {} is smaller than width × bytes per pixel = {} × {} = {row} ({})",
                img.step, img.width, channels, img.encoding
            )));
        }
        let need = img.step.checked_mul(img.height).ok_or_else(|| {
            Error::Image(format!(
                "step {} × height {} overflows",
                img.step, img.height
            ))
        })?;
        if img.data.len() < need {
            return Err(Error::Image(format!(
                "data has {} bytes, step × height = {} × {} = {need} needed",
                img.data.len(),
                img.step,
                img.height
            )));
        }
        Ok(Source {
            width: img.width,
            height: img.height,
            step: img.step,
            channels,
            offsets,
            data: img.data,
        })
    }

    /// Packed RGB of row `y`.
    fn rgb_row(&self, y: usize, out: &mut [u8]) {
        let row = &self.data[y * self.step..y * self.step + self.width * self.channels];
        let [r, g, b] = self.offsets;
        if self.channels == 3 && self.offsets == [0, 1, 2] {
            out.copy_from_slice(row);
            return;
        }
        for (px, o) in row.chunks_exact(self.channels).zip(out.chunks_exact_mut(3)) {
            o[0] = px[r];
            o[1] = px[g];
            o[2] = px[b];
        }
    }
}

/// openpi's resized size for a `w × h` frame in a `size × size` box:
/// `ratio = max(w / size, h / size)`, `(int(w / ratio), int(h / ratio))`, in f64 as Python
/// computes it. A side that would round to 0 (extreme aspect ratios, where PIL would fail) is
/// kept at 1.
pub fn resized_dims(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (w, h, s) = (width as f64, height as f64, size as f64);
    let ratio = (w / s).max(h / s);
    let rw = ((w / ratio) as usize).clamp(1, size);
    let rh = ((h / ratio) as usize).clamp(1, size);
    (rw, rh)
}

/// The whole pipeline: `size × size × 3` HWC f32 in [-1, 1] (the padding is −1).
pub fn image_to_model_input(img: &RawImage, size: usize) -> Result<Vec<f32>> {
    let rgb = resize_with_pad_rgb8(img, size)?;
    Ok(rgb.iter().map(|&v| U8_TO_MODEL[v as usize]).collect())
}

/// Steps 1–2: `size × size × 3` HWC uint8 RGB, letterboxed with black.
pub fn resize_with_pad_rgb8(img: &RawImage, size: usize) -> Result<Vec<u8>> {
    if size == 0 {
        return Err(Error::Image("target size must be at least 1".into()));
    }
    let src = Source::new(img)?;
    let (rw, rh) = if src.width == size && src.height == size {
        (size, size)
    } else {
        resized_dims(src.width, src.height, size)
    };
    let resized = resize_source(&src, rw, rh);
    if rw == size && rh == size {
        return Ok(resized);
    }
    let pad_top = (size - rh) / 2;
    let pad_left = (size - rw) / 2;
    let mut out = vec![0u8; size * size * 3];
    for y in 0..rh {
        let dst = ((pad_top + y) * size + pad_left) * 3;
        out[dst..dst + rw * 3].copy_from_slice(&resized[y * rw * 3..(y + 1) * rw * 3]);
    }
    Ok(out)
}

/// PIL `Image.resize((out_w, out_h), Image.BILINEAR)` of a packed RGB image (`w × h × 3`).
pub fn resize_rgb8(
    rgb: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
) -> Result<Vec<u8>> {
    let img = RawImage {
        width,
        height,
        encoding: "rgb8",
        step: width * 3,
        data: rgb,
    };
    if out_w == 0 || out_h == 0 {
        return Err(Error::Image(format!("empty target size {out_w}×{out_h}")));
    }
    Ok(resize_source(&Source::new(&img)?, out_w, out_h))
}

/// uint8 → openpi's float: `float32(v) / 255 * 2 - 1`, all in f32.
pub fn u8_to_model(v: u8) -> f32 {
    v as f32 / 255.0 * 2.0 - 1.0
}

static U8_TO_MODEL: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|v| u8_to_model(v as u8)));

// ---------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c), 8 bits per channel
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients of one resampling direction.
struct Coeffs {
    ksize: usize,
    /// Per output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle) filter, support 1.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
            *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `ImagingResampleInner`: horizontal pass over the rows the vertical pass needs, then the
/// vertical pass; either is skipped when that side keeps its size.
fn resize_source(src: &Source, out_w: usize, out_h: usize) -> Vec<u8> {
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    let cv = precompute_coeffs(src.height, out_h);
    let (y_first, y_last) = if need_v {
        let first = cv.bounds[0].0;
        let (lmin, ln) = cv.bounds[out_h - 1];
        (first, lmin + ln)
    } else {
        (0, src.height)
    };
    let rows = y_last - y_first;

    // Horizontal pass (or plain RGB conversion) into `tmp`: rows × out_w × 3.
    let tmp_w = if need_h { out_w } else { src.width };
    let mut tmp = vec![0u8; rows * tmp_w * 3];
    let mut line = vec![0u8; src.width * 3];
    let ch = if need_h {
        Some(precompute_coeffs(src.width, out_w))
    } else {
        None
    };
    for (r, y) in (y_first..y_last).enumerate() {
        let dst = &mut tmp[r * tmp_w * 3..(r + 1) * tmp_w * 3];
        match &ch {
            None => src.rgb_row(y, dst),
            Some(c) => {
                src.rgb_row(y, &mut line);
                for xx in 0..out_w {
                    let (xmin, n) = c.bounds[xx];
                    let k = &c.k[xx * c.ksize..xx * c.ksize + n];
                    let px = &line[xmin * 3..(xmin + n) * 3];
                    let half = 1i32 << (PRECISION_BITS - 1);
                    let (mut s0, mut s1, mut s2) = (half, half, half);
                    for (p, &kx) in px.chunks_exact(3).zip(k) {
                        s0 += p[0] as i32 * kx;
                        s1 += p[1] as i32 * kx;
                        s2 += p[2] as i32 * kx;
                    }
                    dst[xx * 3] = clip8(s0);
                    dst[xx * 3 + 1] = clip8(s1);
                    dst[xx * 3 + 2] = clip8(s2);
                }
            }
        }
    }
    if !need_v {
        return tmp;
    }

    // Vertical pass.
    let row_len = tmp_w * 3;
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    for yy in 0..out_h {
        let (ymin, n) = cv.bounds[yy];
        let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (j, &ky) in k.iter().enumerate() {
            let r = ymin + j - y_first;
            let src_row = &tmp[r * row_len..(r + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in out[yy * row_len..(yy + 1) * row_len].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one() {
        for (i, o) in [(640, 224), (480, 168), (7, 19), (224, 224), (1000, 3)] {
            let c = precompute_coeffs(i, o);
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                assert!(xmin + n <= i);
                let s: i64 = c.k[xx * c.ksize..xx * c.ksize + n]
                    .iter()
                    .map(|&v| v as i64)
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} {xx}: {s}"
                );
            }
        }
    }
}
