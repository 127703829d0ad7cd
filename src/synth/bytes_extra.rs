//! PC 3.x `BytesExtra` blobs (the protobuf that carries a group message's sender), written the
//! way WeChat writes them; `decrypt_read::protobuf` reads them.

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, num: u64, bytes: &[u8]) {
    put_varint(out, (num << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A `BytesExtra` blob with the given (type, value) items.
pub fn encode_bytes_extra(items: &[(u64, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &[0x08, 0x10, 0x10, 0x00]);
    for (t, v) in items {
        let mut item = Vec::new();
        put_varint(&mut item, 1 << 3);
        put_varint(&mut item, *t);
        put_bytes(&mut item, 2, v.as_bytes());
        put_bytes(&mut out, 3, &item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::decrypt_read::protobuf::group_sender;

    #[test]
    fn matches_a_blob_wechat_wrote() {
        let ours =
            encode_bytes_extra(&[(1, "wxid_sender01"), (7, "<msgsource><membercount>3</membercount></msgsource>")]);
        let wechat = "0a04081010001a110801120d777869645f73656e64657230311a37080712333c6d7367736f757263653e3c6d656d626572636f756e743e333c2f6d656d626572636f756e743e3c2f6d7367736f757263653e";
        assert_eq!(hex::encode(&ours), wechat);
        assert_eq!(group_sender(&ours).as_deref(), Some("wxid_sender01"));
    }
}
