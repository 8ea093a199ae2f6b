//! A small hand-rolled CDR (OMG XCDR1, "plain CDR") reader and writer: exactly what ROS 2
//! messages in rosbag2 use. Every payload starts with the 4-byte encapsulation header
//! (`00 01 00 00` little endian, `00 00 00 00` big endian); primitives are aligned to their own
//! size counted from the end of that header; strings are a `u32` length that includes the NUL,
//! the bytes and the NUL; sequences are a `u32` count and the elements.
//!
//! Byte sequences (`uint8[]`, an image's pixels) are read and written as one slice copy, never
//! element by element.

use crate::error::{Error, Result};

const HEADER_LE: [u8; 4] = [0, 1, 0, 0];

/// Reads one CDR payload. Every error names the field being read.
pub struct CdrReader<'a> {
    buf: &'a [u8],
    /// Position in `buf`, counting the encapsulation header.
    pos: usize,
    little: bool,
    /// The type being decoded, for error messages.
    what: &'static str,
}

impl<'a> CdrReader<'a> {
    /// Checks the encapsulation header. `what` names the message type in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Result<Self> {
        if buf.len() < 4 {
            return Err(Error::Bag(format!(
                "{what}: CDR payload of {} bytes is shorter than the 4-byte encapsulation header",
                buf.len()
            )));
        }
        let little = match (buf[0], buf[1]) {
            (0, 1) => true,
            (0, 0) => false,
            (a, b) => {
                return Err(Error::Bag(format!(
                    "{what}: unsupported CDR encapsulation {a:02x} {b:02x} (expected plain CDR: \
                     00 01 little endian or 00 00 big endian)"
                )))
            }
        };
        Ok(CdrReader {
            buf,
            pos: 4,
            little,
            what,
        })
    }

    fn align(&mut self, n: usize) {
        let off = self.pos - 4;
        let pad = (n - off % n) % n;
        self.pos += pad;
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.pos > self.buf.len() || self.buf.len() - self.pos < n {
            return Err(Error::Bag(format!(
                "{}: payload truncated reading `{field}` ({n} bytes needed at offset {}, payload is {} bytes)",
                self.what,
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        self.align(N);
        let mut b: [u8; N] = self.take(N, field)?.try_into().expect("length checked");
        if !self.little {
            b.reverse();
        }
        Ok(b)
    }

    pub fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }
    pub fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed::<4>(field)?))
    }
    pub fn i32(&mut self, field: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.fixed::<4>(field)?))
    }
    pub fn f64(&mut self, field: &str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.fixed::<8>(field)?))
    }

    /// A sequence length, checked against the bytes left (each element needs `min_elem` bytes)
    /// so that a corrupt length cannot make us allocate gigabytes.
    fn seq_len(&mut self, field: &str, min_elem: usize) -> Result<usize> {
        let n = self.u32(field)? as usize;
        let left = self.buf.len().saturating_sub(self.pos);
        if n.saturating_mul(min_elem) > left {
            return Err(Error::Bag(format!(
                "{}: `{field}` claims {n} elements but only {left} bytes are left in the payload",
                self.what
            )));
        }
        Ok(n)
    }

    pub fn string(&mut self, field: &str) -> Result<String> {
        let n = self.seq_len(field, 1)?;
        if n == 0 {
            // Some writers emit a zero length for the empty string.
            return Ok(String::new());
        }
        let raw = self.take(n, field)?;
        let body = match raw.split_last() {
            Some((0, body)) => body,
            _ => {
                return Err(Error::Bag(format!(
                    "{}: string `{field}` is not NUL-terminated",
                    self.what
                )))
            }
        };
        String::from_utf8(body.to_vec()).map_err(|_| {
            Error::Bag(format!(
                "{}: string `{field}` is not valid UTF-8",
                self.what
            ))
        })
    }

    pub fn bytes(&mut self, field: &str) -> Result<Vec<u8>> {
        let n = self.seq_len(field, 1)?;
        Ok(self.take(n, field)?.to_vec())
    }

    pub fn strings(&mut self, field: &str) -> Result<Vec<String>> {
        let n = self.seq_len(field, 4)?;
        (0..n).map(|_| self.string(field)).collect()
    }

    pub fn f64s(&mut self, field: &str) -> Result<Vec<f64>> {
        let n = self.seq_len(field, 8)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.align(8);
        let raw = self.take(n * 8, field)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut b: [u8; 8] = c.try_into().expect("chunks of 8");
                if !self.little {
                    b.reverse();
                }
                f64::from_le_bytes(b)
            })
            .collect())
    }

    /// A sequence count of structs (each at least `min_elem` bytes).
    pub fn count(&mut self, field: &str, min_elem: usize) -> Result<usize> {
        self.seq_len(field, min_elem)
    }

    /// Bytes left after the last field read (alignment padding at the end is allowed).
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Writes one little-endian CDR payload, encapsulation header included.
pub struct CdrWriter {
    buf: Vec<u8>,
}

impl Default for CdrWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CdrWriter {
    pub fn new() -> Self {
        Self::with_capacity(64)
    }
    pub fn with_capacity(n: usize) -> Self {
        let mut buf = Vec::with_capacity(n + 4);
        buf.extend_from_slice(&HEADER_LE);
        CdrWriter { buf }
    }
    fn align(&mut self, n: usize) {
        let off = self.buf.len() - 4;
        let pad = (n - off % n) % n;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("CDR sequences hold at most u32::MAX elements"));
    }
    pub fn string(&mut self, s: &str) {
        self.len(s.len() + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }
    pub fn strings(&mut self, v: &[String]) {
        self.len(v.len());
        for s in v {
            self.string(s);
        }
    }
    pub fn f64s(&mut self, v: &[f64]) {
        self.len(v.len());
        if !v.is_empty() {
            self.align(8);
        }
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn count(&mut self, n: usize) {
        self.len(n);
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_counts_from_after_the_header() {
        let mut w = CdrWriter::new();
        w.u8(7);
        w.f64(1.5);
        let b = w.finish();
        // header(4) + u8 + 7 padding + f64
        assert_eq!(b.len(), 4 + 1 + 7 + 8);
        let mut r = CdrReader::new(&b, "test").unwrap();
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.f64("b").unwrap(), 1.5);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn big_endian_payloads_decode() {
        // 00 00 = big endian; u32 0x01020304, string "ab"
        let b = [0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 3, b'a', b'b', 0];
        let mut r = CdrReader::new(&b, "test").unwrap();
        assert_eq!(r.u32("x").unwrap(), 0x01020304);
        assert_eq!(r.string("s").unwrap(), "ab");
    }

    #[test]
    fn corrupt_lengths_are_errors_not_allocations() {
        let mut w = CdrWriter::new();
        w.u32(u32::MAX);
        let b = w.finish();
        let err = CdrReader::new(&b, "sensor_msgs/msg/Image")
            .unwrap()
            .bytes("data")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`data` claims 4294967295 elements"), "{err}");
        let err = CdrReader::new(&[1, 2], "X").err().unwrap().to_string();
        assert!(
            err.contains("shorter than the 4-byte encapsulation header"),
            "{err}"
        );
        let err = CdrReader::new(&[0, 7, 0, 0], "X")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unsupported CDR encapsulation 00 07"), "{err}");
    }

    #[test]
    fn strings_need_their_terminator() {
        let b = [0, 1, 0, 0, 2, 0, 0, 0, b'a', b'b'];
        let err = CdrReader::new(&b, "X")
            .unwrap()
            .string("frame_id")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`frame_id` is not NUL-terminated"), "{err}");
    }
}
