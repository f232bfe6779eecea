//! Reading tensors from a safetensors file: a little-endian u64 header length, a
//! JSON header naming each tensor's dtype, shape and byte range, then the data. Every
//! size is checked against the file before anything is allocated from it.

use std::collections::HashMap;

use serde::Deserialize;

/// Largest header accepted.
const MAX_HEADER: u64 = 100 << 20;

/// A tensor as f32, row-major.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Every tensor in `bytes` (a whole safetensors file), converted to f32.
pub fn parse(bytes: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or("shorter than its 8-byte header length")?;
    let len = u64::from_le_bytes(*len);
    if len > MAX_HEADER || len > rest.len() as u64 {
        return Err(format!(
            "header of {len} bytes does not fit the file ({} bytes)",
            bytes.len()
        ));
    }
    let (header, data) = rest.split_at(usize::try_from(len).map_err(|e| e.to_string())?);
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let mut out = HashMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry = serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))?;
        let [begin, end] = e.data_offsets;
        let raw = data
            .get(begin..end)
            .filter(|_| begin <= end)
            .ok_or_else(|| format!("{name}: bytes {begin}..{end} outside the data"))?;
        let count = e
            .shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| format!("{name}: shape {:?} overflows", e.shape))?;
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(format!(
                    "{name}: dtype {other} (F32, F16 and BF16 are read)"
                ));
            }
        };
        if count.checked_mul(width) != Some(raw.len()) {
            return Err(format!(
                "{name}: {} bytes for shape {:?} of {}",
                raw.len(),
                e.shape,
                e.dtype
            ));
        }
        let values = match e.dtype.as_str() {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|c| f16(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            _ => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
        };
        out.insert(
            name,
            Tensor {
                shape: e.shape,
                data: values,
            },
        );
    }
    Ok(out)
}

/// IEEE half to single precision.
fn f16(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let (mut e, mut f) = (127 - 15 + 1, frac);
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// A safetensors file holding `tensors` as F32 (for tests and tools).
pub fn write(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let begin = data.len();
        for v in *values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes, or a plausible header over any data: an error or tensors whose
        /// sizes match their shapes, never a panic.
        #[test]
        fn any_file_parses_or_is_refused(data in proptest::collection::vec(any::<u8>(), 0..512),
                                          shape in proptest::collection::vec(0usize..70_000, 0..4),
                                          dtype in prop::sample::select(vec!["F32", "F16", "BF16", "I8"]),
                                          begin in 0usize..600, len in 0usize..600) {
            let _ = parse(&data);
            let header = serde_json::json!({"t": {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + len]}}).to_string();
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header.as_bytes());
            file.extend_from_slice(&data);
            if let Ok(t) = parse(&file) {
                let t = &t["t"];
                prop_assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
            }
        }
    }

    #[test]
    fn round_trip_and_bad_files() {
        let file = write(&[("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), ("b", &[1], &[-0.5])]);
        let t = parse(&file).unwrap();
        assert_eq!(t["a"].shape, [2, 2]);
        assert_eq!(t["a"].data, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t["b"].data, [-0.5]);
        assert!(parse(&file[..5]).unwrap_err().contains("8-byte"));
        let mut huge = file.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("does not fit"));
        let cut = &file[..file.len() - 2];
        assert!(parse(cut).unwrap_err().contains("outside the data"));
        assert_eq!(f16(0x3c00), 1.0);
        assert_eq!(f16(0xc000), -2.0);
        assert_eq!(f16(0x0001), 2f32.powi(-24));
    }
}
