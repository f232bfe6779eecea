//! Reading tensors from a safetensors file: a little-endian u64 header length, a
//! JSON header naming each tensor's dtype, shape and byte range, then the data. Every
//! entry's range and size are checked against the file when it is opened, before
//! anything is allocated from them; a tensor is converted to f32 only when it is
//! asked for, so tensors a model does not use (integer buffers such as
//! `embeddings.position_ids`) may have any dtype.

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

/// An opened safetensors file: its checked header and the whole file.
pub struct File {
    entries: HashMap<String, Entry>,
    bytes: Vec<u8>,
    /// Where the data starts (after the header).
    data_start: usize,
}

/// Bytes per value of the dtypes safetensors defines; `None` for one it does not.
fn width(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Opens `bytes` (a whole safetensors file): checks every entry's byte range and,
/// for the dtypes safetensors defines, that its size matches its shape.
pub fn parse(bytes: Vec<u8>) -> Result<File, String> {
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
    let header_end = 8 + usize::try_from(len).map_err(|e| e.to_string())?;
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..header_end]).map_err(|e| format!("header: {e}"))?;
    let data_len = bytes.len() - header_end;
    let mut entries = HashMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry = serde_json::from_value(value).map_err(|e| format!("{name}: {e}"))?;
        let [begin, end] = e.data_offsets;
        if begin > end || end > data_len {
            return Err(format!("{name}: bytes {begin}..{end} outside the data"));
        }
        let count = e
            .shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| format!("{name}: shape {:?} overflows", e.shape))?;
        if let Some(w) = width(&e.dtype)
            && count.checked_mul(w) != Some(end - begin)
        {
            return Err(format!(
                "{name}: {} bytes for shape {:?} of {}",
                end - begin,
                e.shape,
                e.dtype
            ));
        }
        entries.insert(name, e);
    }
    Ok(File {
        entries,
        bytes,
        data_start: header_end,
    })
}

impl File {
    /// Whether the file has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Tensor `name` as f32; an error names it when it is missing or its dtype is
    /// not a float one (F32, F16, BF16).
    pub fn tensor(&self, name: &str) -> Result<Tensor, String> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| format!("model.safetensors has no {name}"))?;
        let [begin, end] = e.data_offsets.map(|o| self.data_start + o);
        let raw = &self.bytes[begin..end];
        let data = match e.dtype.as_str() {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|c| f16(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            "BF16" => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            other => {
                return Err(format!(
                    "{name}: dtype {other}, where the encoder reads F32, F16 or BF16"
                ));
            }
        };
        Ok(Tensor {
            shape: e.shape.clone(),
            data,
        })
    }
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
                                          dtype in prop::sample::select(vec!["F32", "F16", "BF16", "I8", "I64", "Q4"]),
                                          begin in 0usize..600, len in 0usize..600) {
            let _ = parse(data.clone());
            let header = serde_json::json!({"t": {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + len]}}).to_string();
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header.as_bytes());
            file.extend_from_slice(&data);
            if let Ok(f) = parse(file) && let Ok(t) = f.tensor("t") {
                prop_assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
            }
        }
    }

    #[test]
    fn round_trip_and_bad_files() {
        let file = write(&[("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), ("b", &[1], &[-0.5])]);
        let t = parse(file.clone()).unwrap();
        assert_eq!(t.tensor("a").unwrap().shape, [2, 2]);
        assert_eq!(t.tensor("a").unwrap().data, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.tensor("b").unwrap().data, [-0.5]);
        assert!(t.tensor("c").unwrap_err().contains("has no c"));
        assert!(parse(file[..5].to_vec()).err().unwrap().contains("8-byte"));
        let mut huge = file.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(huge).err().unwrap().contains("does not fit"));
        let cut = file[..file.len() - 2].to_vec();
        assert!(parse(cut).err().unwrap().contains("outside the data"));
        assert_eq!(f16(0x3c00), 1.0);
        assert_eq!(f16(0xc000), -2.0);
        assert_eq!(f16(0x0001), 2f32.powi(-24));
    }

    /// An integer buffer the encoder does not use (as sentence-transformers' exports
    /// carry `embeddings.position_ids`) opens; asking for it names it and its dtype.
    #[test]
    fn integer_tensors_open_and_are_refused_only_when_asked_for() {
        let ids: Vec<u8> = (0..4i64).flat_map(i64::to_le_bytes).collect();
        let header = serde_json::json!({
            "position_ids": {"dtype": "I64", "shape": [1, 4], "data_offsets": [0, 32]},
            "w": {"dtype": "F32", "shape": [1], "data_offsets": [32, 36]},
        })
        .to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&ids);
        file.extend_from_slice(&1.5f32.to_le_bytes());
        let f = parse(file.clone()).unwrap();
        assert_eq!(f.tensor("w").unwrap().data, [1.5]);
        let err = f.tensor("position_ids").unwrap_err();
        assert!(err.contains("position_ids: dtype I64"), "{err}");
        // A size that does not match its shape is refused at open, whatever the dtype.
        let header = serde_json::json!({
            "position_ids": {"dtype": "I64", "shape": [1, 5], "data_offsets": [0, 32]},
        })
        .to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&ids);
        let err = parse(file).err().unwrap();
        assert!(
            err.contains("position_ids: 32 bytes for shape [1, 5] of I64"),
            "{err}"
        );
    }
}
