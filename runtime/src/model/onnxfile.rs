//! The ONNX file as bytes: its top-level protobuf fields, and the two hashes that name it (the
//! file's sha256, and the graph sha256 the exporter writes, which is the model id).

use sha2::{Digest, Sha256};

/// `ModelProto.metadata_props`: where the manifest lives, and what the graph hash leaves out.
pub const METADATA_PROPS: u64 = 14;

/// One top-level protobuf field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Field number.
    pub number: u64,
    /// Its bytes when length-delimited.
    pub payload: Option<&'a [u8]>,
    /// The whole record as written: key, length and value.
    pub record: &'a [u8],
}

/// Top-level fields of a protobuf message; `None` when the bytes are not well formed.
pub fn fields(bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let key = varint(bytes, &mut i)?;
        let payload = match key & 7 {
            0 => {
                varint(bytes, &mut i)?;
                None
            }
            1 => {
                i = i.checked_add(8)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut i)?).ok()?;
                let from = i;
                i = i.checked_add(len)?;
                Some(bytes.get(from..i)?)
            }
            5 => {
                i = i.checked_add(4)?;
                None
            }
            _ => return None,
        };
        out.push(Field {
            number: key >> 3,
            payload,
            record: bytes.get(start..i)?,
        });
    }
    Some(out)
}

/// One protobuf varint at `*i`, advancing `*i` past it.
fn varint(bytes: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// SHA-256 of the file's bytes, in hex.
pub fn file_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of an ONNX file with its `metadata_props` removed: the exporter's `graph_sha256`.
///
/// The exporter hashes `ModelProto` re-serialized without its metadata (field 14). Protobuf
/// writes fields in number order and sub-messages verbatim, so dropping the top-level field-14
/// records from the file's bytes yields the same bytes for files the exporter (or onnx.save)
/// wrote. Returns `None` when the bytes are not a well-formed protobuf message.
pub fn graph_sha256(bytes: &[u8]) -> Option<String> {
    let mut h = Sha256::new();
    for f in fields(bytes)? {
        if f.number != METADATA_PROPS {
            h.update(f.record);
        }
    }
    Some(hex(&h.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_hash_skips_only_metadata() {
        // field 1 varint 8, field 14 (len 2 "ab"), field 7 (len 1 "x")
        let with = [0x08, 0x08, 0x72, 0x02, b'a', b'b', 0x3a, 0x01, b'x'];
        let without = [0x08, 0x08, 0x3a, 0x01, b'x'];
        assert_eq!(graph_sha256(&with), graph_sha256(&without));
        assert_eq!(graph_sha256(&without).unwrap(), file_sha256(&without));
        assert_eq!(graph_sha256(&[0x3a, 0x05, b'x']), None, "truncated");
        assert_eq!(graph_sha256(&[0x0b]), None, "group wire type");
    }
}
