//! `sensor_msgs/CompressedImage` → raw `sensor_msgs/Image` (JPEG and PNG; pure Rust decoders).
//!
//! The format field is what `image_transport`'s compressed plugin writes (`jpeg`, `png`, or
//! `"<encoding>; jpeg compressed bgr8"`); when it names neither, the data's magic bytes decide.
//! Colour JPEGs decode to `rgb8` (a JPEG stores true colours whatever channel order the
//! publisher's OpenCV image had), grey ones to `mono8`; PNGs keep their channels (`mono8`,
//! `rgb8`, `rgba8`; 16-bit is reduced to 8, palettes expanded, grey+alpha loses the alpha).
//! `compressedDepth` images are refused.

use super::msgs::{CompressedImage, Image};
use crate::error::{Error, Result};

/// Largest accepted width or height.
pub const MAX_SIDE: usize = 16384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
}

fn kind(c: &CompressedImage) -> Result<Kind> {
    let f = c.format.to_ascii_lowercase();
    let bad = |why: &str| {
        Error::Image(format!(
            "sensor_msgs/CompressedImage format `{}`: {why}",
            c.format
        ))
    };
    if f.contains("compresseddepth") {
        return Err(bad(
            "compressedDepth images are not supported (camera images only)",
        ));
    }
    if f.contains("jpeg") || f.contains("jpg") {
        return Ok(Kind::Jpeg);
    }
    if f.contains("png") {
        return Ok(Kind::Png);
    }
    if c.data.starts_with(&[0xff, 0xd8, 0xff]) {
        return Ok(Kind::Jpeg);
    }
    if c.data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Kind::Png);
    }
    Err(bad("unsupported (supported: jpeg, png)"))
}

/// Decodes to a raw image with the same header.
pub fn decompress(c: &CompressedImage) -> Result<Image> {
    let k = kind(c)?;
    let (width, height, encoding, data) = match k {
        Kind::Jpeg => decode_jpeg(c)?,
        Kind::Png => decode_png(c)?,
    };
    let ch = match encoding {
        "mono8" => 1,
        "rgb8" => 3,
        _ => 4,
    };
    Ok(Image {
        header: c.header.clone(),
        height: height as u32,
        width: width as u32,
        encoding: encoding.to_string(),
        is_bigendian: 0,
        step: (width * ch) as u32,
        data,
    })
}

type Decoded = (usize, usize, &'static str, Vec<u8>);

fn decode_jpeg(c: &CompressedImage) -> Result<Decoded> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let err = |e: String| {
        Error::Image(format!(
            "sensor_msgs/CompressedImage format `{}`: corrupt JPEG data: {e}",
            c.format
        ))
    };
    let opts = DecoderOptions::default()
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut probe = zune_jpeg::JpegDecoder::new_with_options(c.data.as_slice(), opts);
    probe.decode_headers().map_err(|e| err(format!("{e:?}")))?;
    let grey = matches!(
        probe.get_input_colorspace(),
        Some(ColorSpace::Luma) | Some(ColorSpace::LumaA)
    );
    let (out, enc, ch) = if grey {
        (ColorSpace::Luma, "mono8", 1)
    } else {
        (ColorSpace::RGB, "rgb8", 3)
    };
    let mut d = zune_jpeg::JpegDecoder::new_with_options(
        c.data.as_slice(),
        opts.jpeg_set_out_colorspace(out),
    );
    let data = d.decode().map_err(|e| err(format!("{e:?}")))?;
    let info = d.info().ok_or_else(|| err("no image header".into()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if data.len() != w * h * ch {
        return Err(err(format!(
            "decoded {} bytes for {w}x{h} {enc}",
            data.len()
        )));
    }
    Ok((w, h, enc, data))
}

fn decode_png(c: &CompressedImage) -> Result<Decoded> {
    let err = |e: String| {
        Error::Image(format!(
            "sensor_msgs/CompressedImage format `{}`: corrupt PNG data: {e}",
            c.format
        ))
    };
    let mut dec = png::Decoder::new(std::io::Cursor::new(c.data.as_slice()));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| err(e.to_string()))?;
    let (w, h) = {
        let i = reader.info();
        (i.width as usize, i.height as usize)
    };
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(err(format!("{w}x{h} is larger than {MAX_SIDE} per side")));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| err("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if info.bit_depth != png::BitDepth::Eight {
        return Err(err(format!(
            "bit depth {:?} after expansion",
            info.bit_depth
        )));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let rows = |ch: usize| -> Vec<u8> {
        // Drop any per-row padding (line_size is exact for 8-bit data, but be safe).
        buf.chunks(info.line_size)
            .take(h)
            .flat_map(|r| r[..w * ch].iter().copied())
            .collect()
    };
    Ok(match info.color_type {
        png::ColorType::Grayscale => (w, h, "mono8", rows(1)),
        png::ColorType::Rgb => (w, h, "rgb8", rows(3)),
        png::ColorType::Rgba => (w, h, "rgba8", rows(4)),
        png::ColorType::GrayscaleAlpha => {
            let ga = rows(2);
            (w, h, "mono8", ga.chunks_exact(2).map(|p| p[0]).collect())
        }
        png::ColorType::Indexed => return Err(err("palette not expanded".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bag::msgs::Header;

    fn png_bytes(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut out, w, h);
            e.set_color(color);
            e.set_depth(depth);
            let mut wr = e.write_header().unwrap();
            wr.write_image_data(data).unwrap();
        }
        out
    }

    fn ci(format: &str, data: Vec<u8>) -> CompressedImage {
        CompressedImage {
            header: Header::default(),
            format: format.into(),
            data,
        }
    }

    #[test]
    fn png_variants_decode_exactly() {
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 11) as u8).collect();
        let img = decompress(&ci(
            "png",
            png_bytes(5, 3, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
        ))
        .unwrap();
        assert_eq!(
            (img.width, img.height, img.encoding.as_str(), img.step),
            (5, 3, "rgb8", 15)
        );
        assert_eq!(img.data, rgb);
        // 16-bit grey → mono8 (high bytes), format from magic bytes.
        let g16: Vec<u8> = (0..4u16).flat_map(|v| (v * 300).to_be_bytes()).collect();
        let img = decompress(&ci(
            "",
            png_bytes(
                2,
                2,
                png::ColorType::Grayscale,
                png::BitDepth::Sixteen,
                &g16,
            ),
        ))
        .unwrap();
        assert_eq!(img.encoding, "mono8");
        assert_eq!(img.data, vec![0, 1, 2, 3]);
        let rgba = vec![1u8, 2, 3, 4, 5, 6, 7, 8];
        let img = decompress(&ci(
            "rgba8; png compressed rgba8",
            png_bytes(2, 1, png::ColorType::Rgba, png::BitDepth::Eight, &rgba),
        ))
        .unwrap();
        assert_eq!((img.encoding.as_str(), img.data.clone()), ("rgba8", rgba));
    }

    #[test]
    fn jpeg_colour_and_grey() {
        let (w, h) = (16usize, 8usize);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| [(i % w * 16) as u8, (i / w * 32) as u8, 128])
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 100)
            .encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let img = decompress(&ci("bgr8; jpeg compressed bgr8", out)).unwrap();
        assert_eq!(
            (img.width, img.height, img.encoding.as_str(), img.step),
            (16, 8, "rgb8", 48)
        );
        let mean_err = img
            .data
            .iter()
            .zip(&rgb)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(mean_err < 3.0, "mean abs error {mean_err}");
        let grey: Vec<u8> = (0..w * h).map(|i| (i * 2) as u8).collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 100)
            .encode(&grey, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let img = decompress(&ci("", out)).unwrap();
        assert_eq!((img.encoding.as_str(), img.data.len()), ("mono8", w * h));
        let max_err = img
            .data
            .iter()
            .zip(&grey)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(max_err <= 4, "max error {max_err}");
    }

    #[test]
    fn bad_data_and_formats_are_errors() {
        let e = decompress(&ci("jpeg", vec![0xff, 0xd8, 0xff, 0, 1, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt JPEG data"), "{e}");
        let e = decompress(&ci("png", b"\x89PNG\r\n\x1a\nxx".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt PNG data"), "{e}");
        let e = decompress(&ci("16UC1; compressedDepth png", vec![]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compressedDepth images are not supported"),
            "{e}"
        );
        let e = decompress(&ci("tiff", vec![1, 2, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format `tiff`: unsupported (supported: jpeg, png)"),
            "{e}"
        );
    }
}
