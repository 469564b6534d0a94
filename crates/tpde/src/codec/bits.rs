//! Bit I/O (most significant bit first) and the Elias-delta code.
//!
//! Both directions work a 64-bit word at a time: the writer packs codes into
//! an accumulator and flushes whole words; the reader keeps a left-aligned
//! window that it refills eight bytes at a time and decodes with leading-zero
//! counts, never bit by bit.

use crate::common::error::{Error, Result};

/// Packs bits, most significant first, into bytes.
#[derive(Debug, Default)]
pub struct BitWriter {
    out: Vec<u8>,
    /// Pending bits, left-aligned.
    acc: u64,
    /// Number of pending bits in `acc` (0..64).
    used: u32,
}

impl BitWriter {
    /// An empty writer.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for about `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            out: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Writes the low `len` bits of `value` (`len <= 64`), most significant first.
    /// Bits of `value` above `len` must be zero.
    #[inline]
    pub fn write(&mut self, value: u64, len: u32) {
        debug_assert!(len <= 64);
        debug_assert!(len == 64 || value >> len == 0);
        if len == 0 {
            return;
        }
        let free = 64 - self.used;
        if len < free {
            self.acc |= value << (free - len);
            self.used += len;
        } else {
            let rest = len - free; // 0..=63
            self.acc |= value >> rest;
            self.out.extend_from_slice(&self.acc.to_be_bytes());
            self.acc = if rest == 0 { 0 } else { value << (64 - rest) };
            self.used = rest;
        }
    }

    /// Writes `g >= 1` with the Elias-delta code.
    #[inline]
    pub fn write_elias_delta(&mut self, g: u64) {
        debug_assert!(g >= 1);
        let l = 64 - g.leading_zeros(); // bit length, 1..=64
        let n = 31 - l.leading_zeros(); // floor(log2 l), 0..=6
                                        // N zeros followed by L in N + 1 bits is L written in 2N + 1 bits.
        self.write(u64::from(l), 2 * n + 1);
        let low = l - 1;
        if low > 0 {
            self.write(g & (u64::MAX >> (64 - low)), low);
        }
    }

    /// Number of bits written so far.
    #[cfg(test)]
    pub fn bit_len(&self) -> u64 {
        self.out.len() as u64 * 8 + u64::from(self.used)
    }

    /// Pads the last byte with zero bits and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let bytes = self.used.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_be_bytes()[..bytes]);
        self.out
    }
}

/// Length in bits of the Elias-delta code of `g >= 1`.
#[inline]
pub fn elias_delta_len(g: u64) -> u32 {
    let l = 64 - g.leading_zeros();
    let n = 31 - l.leading_zeros();
    2 * n + l
}

/// Reads bits, most significant first, from a byte slice.
#[derive(Debug)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    /// Next byte of `bytes` not yet counted in `avail`.
    pos: usize,
    /// Window of upcoming bits, left-aligned; the top `avail` bits are valid.
    buf: u64,
    avail: u32,
}

fn truncated_stream() -> Error {
    Error::corrupt("bit stream ends in the middle of a code")
}

impl<'a> BitReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader {
            bytes,
            pos: 0,
            buf: 0,
            avail: 0,
        }
    }

    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self.bytes.get(self.pos..self.pos + 8) {
            // Eight bytes are there: OR in a whole word. Bits below the
            // counted ones are either zero or the same stream bits again.
            let word = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            self.buf |= word >> self.avail;
            let take = (63 - self.avail) >> 3;
            self.pos += take as usize;
            self.avail += take * 8;
        } else {
            while self.avail <= 56 {
                let Some(&b) = self.bytes.get(self.pos) else {
                    break;
                };
                self.buf |= u64::from(b) << (56 - self.avail);
                self.pos += 1;
                self.avail += 8;
            }
        }
    }

    /// Reads `len <= 56` bits.
    #[inline]
    fn read_short(&mut self, len: u32) -> Result<u64> {
        debug_assert!(len <= 56);
        if self.avail < len {
            self.refill();
            if self.avail < len {
                return Err(truncated_stream());
            }
        }
        if len == 0 {
            return Ok(0);
        }
        let v = self.buf >> (64 - len);
        self.buf <<= len;
        self.avail -= len;
        Ok(v)
    }

    /// Reads `len <= 64` bits.
    #[inline]
    pub fn read(&mut self, len: u32) -> Result<u64> {
        debug_assert!(len <= 64);
        if len <= 56 {
            self.read_short(len)
        } else {
            let hi = self.read_short(len - 32)?;
            let lo = self.read_short(32)?;
            Ok((hi << 32) | lo)
        }
    }

    /// Reads one Elias-delta code.
    #[inline]
    pub fn read_elias_delta(&mut self) -> Result<u64> {
        if self.avail < 13 {
            self.refill();
        }
        let n = self.buf.leading_zeros();
        if n > 6 {
            // L would exceed 64 bits, or the stream ran out.
            return Err(if n >= self.avail {
                truncated_stream()
            } else {
                Error::corrupt("Elias-delta code longer than 64 bits")
            });
        }
        let l = self.read_short(2 * n + 1)? as u32; // top bit set by construction
        if l > 64 {
            return Err(Error::corrupt("Elias-delta code longer than 64 bits"));
        }
        let low = self.read(l - 1)?;
        Ok((1u64 << (l - 1)) | low)
    }

    /// Number of bits read so far.
    pub fn bits_read(&self) -> u64 {
        self.pos as u64 * 8 - u64::from(self.avail)
    }

    /// Checks that only zero padding, less than a byte, is left.
    pub fn expect_end(&mut self) -> Result<()> {
        let total = self.bytes.len() as u64 * 8;
        let left = total - self.bits_read();
        if left >= 8 {
            return Err(Error::corrupt("bit stream has trailing bytes"));
        }
        if self.read_short(left as u32)? != 0 {
            return Err(Error::corrupt("bit stream padding is not zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_of(g: u64) -> String {
        let mut w = BitWriter::new();
        w.write_elias_delta(g);
        let len = w.bit_len() as usize;
        let bytes = w.finish();
        (0..len)
            .map(|i| {
                if bytes[i / 8] >> (7 - i % 8) & 1 == 1 {
                    '1'
                } else {
                    '0'
                }
            })
            .collect()
    }

    #[test]
    fn design_test_vectors() {
        for (g, code) in [
            (1, "1"),
            (2, "0100"),
            (3, "0101"),
            (4, "01100"),
            (5, "01101"),
            (8, "00100000"),
            (10, "00100010"),
            (17, "001010001"),
        ] {
            assert_eq!(bits_of(g), code, "Elias-delta code of {g}");
            assert_eq!(elias_delta_len(g) as usize, code.len());
        }
    }

    fn edge_values() -> Vec<u64> {
        let mut v = vec![1, u64::MAX, u64::MAX - 1];
        for k in 1..64 {
            let p = 1u64 << k;
            v.extend([p - 1, p, p + 1]);
        }
        v
    }

    #[test]
    fn round_trips_at_powers_of_two_and_max() {
        let values = edge_values();
        let mut w = BitWriter::new();
        for &g in &values {
            w.write_elias_delta(g);
        }
        let expected_bits: u64 = values.iter().map(|&g| u64::from(elias_delta_len(g))).sum();
        assert_eq!(w.bit_len(), expected_bits);
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &g in &values {
            assert_eq!(r.read_elias_delta().unwrap(), g);
        }
        r.expect_end().unwrap();
        // u64::MAX takes 6 zeros, 7 bits of L and 63 bits.
        assert_eq!(elias_delta_len(u64::MAX), 76);
    }

    #[test]
    fn mixed_widths_round_trip() {
        let items: Vec<(u64, u32)> = (0..2000u64)
            .map(|i| {
                let len = (i * 7 % 65) as u32;
                let v = if len == 0 {
                    0
                } else {
                    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (64 - len)
                };
                (v, len)
            })
            .collect();
        let mut w = BitWriter::new();
        for &(v, l) in &items {
            w.write(v, l);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, l) in &items {
            assert_eq!(r.read(l).unwrap(), v);
        }
        r.expect_end().unwrap();
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors() {
        let mut w = BitWriter::new();
        w.write_elias_delta(1 << 40);
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            let mut r = BitReader::new(&bytes[..cut]);
            assert!(r.read_elias_delta().is_err(), "cut at {cut}");
        }
        let zeros = [0u8; 16];
        assert!(BitReader::new(&zeros).read_elias_delta().is_err());
        let mut r = BitReader::new(&[0x80, 0x01]);
        assert_eq!(r.read_elias_delta().unwrap(), 1);
        assert!(r.expect_end().is_err());
    }
}
