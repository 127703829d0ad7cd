//! Just enough protobuf to read PC 3.x `BytesExtra`; never panics on bad input.

/// A decoded field: number and either a varint or a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// Top-level fields of a message; None if the bytes are not well-formed protobuf.
pub fn fields(buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let v = match wire {
            0 => Value::Varint(varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8)?;
                pos += 8;
                Value::Fixed(u64::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                let b = buf.get(pos..end)?;
                pos = end;
                Value::Bytes(b)
            }
            5 => {
                let b = buf.get(pos..pos + 4)?;
                pos += 4;
                Value::Fixed(u64::from(u32::from_le_bytes(b.try_into().ok()?)))
            }
            _ => return None,
        };
        out.push((num, v));
    }
    Some(out)
}

/// `BytesExtra` items (field 3: `{1: type, 2: value}`) as (type, value) pairs.
pub fn bytes_extra_items(buf: &[u8]) -> Vec<(u64, String)> {
    let mut items = Vec::new();
    for (num, v) in fields(buf).unwrap_or_default() {
        if let (3, Value::Bytes(item)) = (num, v) {
            let mut ty = None;
            let mut val = None;
            for (n, iv) in fields(item).unwrap_or_default() {
                match (n, iv) {
                    (1, Value::Varint(t)) => ty = Some(t),
                    (2, Value::Bytes(b)) => val = Some(String::from_utf8_lossy(b).into_owned()),
                    _ => {}
                }
            }
            if let (Some(t), Some(v)) = (ty, val) {
                items.push((t, v));
            }
        }
    }
    items
}

/// The group sender wxid: item type 1, with any `:suffix` cut off.
pub fn group_sender(buf: &[u8]) -> Option<String> {
    bytes_extra_items(buf)
        .into_iter()
        .find(|(t, _)| *t == 1)
        .map(|(_, v)| v.split(':').next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reference_fixture() {
        let hex = "0a04081010001a110801120d777869645f73656e64657230311a37080712333c6d7367736f757263653e3c6d656d626572636f756e743e333c2f6d656d626572636f756e743e3c2f6d7367736f757263653e";
        let buf = hex::decode(hex).unwrap();
        assert_eq!(group_sender(&buf).as_deref(), Some("wxid_sender01"));
        let items = bytes_extra_items(&buf);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].0, 7);
    }

    #[test]
    fn garbage_is_not_a_panic() {
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(0x9f)).collect();
            let _ = fields(&junk);
            let _ = group_sender(&junk);
        }
    }
}
