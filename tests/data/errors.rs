//! Bad input: one-line errors naming the file and what was tried; never the key, never a panic.

use avatar::stages::decrypt_read::{DecryptReadParams, SourceFormat, read_source};

use super::fixture::{fixture, params_for};

fn err(path: &std::path::Path, p: &DecryptReadParams) -> String {
    let e = read_source(path, p).expect_err("must fail");
    let s = format!("{e:#}");
    assert!(!s.contains('\n'), "one line: {s}");
    s
}

#[test]
fn wrong_android_key_names_file_and_candidates_not_values() {
    let fx = fixture();
    let mut p = params_for("android");
    p.uin = Some("999".into());
    let s = err(&fx.path("android"), &p);
    assert!(s.contains("EnMicroMsg.db") && s.contains("tried") && s.contains("fallback IMEI"), "{s}");
    let wrong = avatar::stages::decrypt_read::sqlcipher::android_key(&fx.keys.imei, "999");
    assert!(!s.contains(&wrong) && !s.contains("866123456789012"), "no secrets in errors: {s}");
    // No key material at all.
    let s = err(&fx.path("android"), &DecryptReadParams::default());
    assert!(s.contains("no key material"), "{s}");
}

#[test]
fn fallback_imei_and_direct_key_open_android() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let h = avatar::synth::generate(50, 9, 5);
    let keys =
        avatar::synth::write_formats(dir.path(), &h, &["android".to_string()], 9, "1234567890ABCDEF", "42", 1).unwrap();
    let p = DecryptReadParams { uin: Some("42".into()), ..Default::default() };
    assert_eq!(read_source(&dir.path().join("android"), &p).unwrap().1.len(), 50);
    let p = DecryptReadParams { key: Some(keys.android_key.clone()), ..Default::default() };
    assert_eq!(read_source(&dir.path().join("android/EnMicroMsg.db"), &p).unwrap().1.len(), 50);
    let _ = fx;
}

#[test]
fn wrong_pc_keys_fail_cleanly() {
    let fx = fixture();
    for f in ["pc3", "pc4"] {
        let mut p = params_for(f);
        p.key = Some("00".repeat(32));
        let s = err(&fx.path(f), &p);
        assert!(s.contains("tried the `key` param"), "{s}");
        assert!(!s.contains(&fx.keys.pc_key));
        p.key = Some("abc".into());
        let s = err(&fx.path(f), &p);
        assert!(s.contains("64 hex"), "{s}");
    }
}

#[test]
fn key_env_is_read_from_the_environment() {
    let fx = fixture();
    let var = "AVATAR_TEST_PC_KEY_DATA_RS";
    // SAFETY: this test binary sets no other variable with this name; reads are by name only.
    unsafe { std::env::set_var(var, &fx.keys.pc_key) };
    let p = DecryptReadParams { key_env: Some(var.into()), ..Default::default() };
    assert_eq!(read_source(&fx.path("pc4"), &p).unwrap().1.len(), super::fixture::MESSAGES);
    let p = DecryptReadParams { key_env: Some("AVATAR_TEST_UNSET_VAR".into()), ..Default::default() };
    assert!(err(&fx.path("pc4"), &p).contains("not set"));
}

#[test]
fn not_a_wechat_database_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("EnMicroMsg.db");
    // Bytes that look encrypted (not text): the keys are tried, and none opens it.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80).collect();
    std::fs::write(&junk, &noise).unwrap();
    let p = DecryptReadParams { uin: Some("1".into()), ..Default::default() };
    let s = err(&junk, &p);
    assert!(s.contains("EnMicroMsg.db") && s.contains("not a WeChat database"), "{s}");
    // Text is said to be text, not tried as a database.
    std::fs::write(&junk, vec![0x5au8; 4096]).unwrap();
    let s = err(&junk, &p);
    assert!(s.contains("EnMicroMsg.db") && s.contains("is a text file"), "{s}");
    // A plain SQLite file without WeChat tables.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    let s = err(&other, &DecryptReadParams { format: SourceFormat::Sqlite, ..Default::default() });
    assert!(s.contains("other.db") && s.contains("not a WeChat database"), "{s}");
    // A truncated encrypted database.
    let fx = fixture();
    let bytes = std::fs::read(fx.path("android").join("EnMicroMsg.db")).unwrap();
    let cut = dir.path().join("cut").join("EnMicroMsg.db");
    std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let r = read_source(&cut, &params_for("android"));
    if let Err(e) = r {
        assert!(format!("{e:#}").contains("EnMicroMsg.db") || format!("{e:#}").contains("malformed"), "{e:#}");
    }
    // A missing path.
    assert!(err(&dir.path().join("nope"), &DecryptReadParams::default()).contains("no such file"));
}

#[test]
fn csv_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("message.csv"), "msgId,type,isSend,createTime,talker\n1,1,0,5,wxid_a\n").unwrap();
    std::fs::write(dir.path().join("rcontact.csv"), "username,nickname\nwxid_a,A\n").unwrap();
    let s = err(dir.path(), &DecryptReadParams::default());
    assert!(s.contains("message.csv") && s.contains("`content`"), "{s}");
    std::fs::write(
        dir.path().join("message.csv"),
        "msgId,type,isSend,createTime,talker,content\n1,one,0,5,wxid_a,hi\n",
    )
    .unwrap();
    let s = err(dir.path(), &DecryptReadParams::default());
    assert!(s.contains("message.csv:2") && s.contains("`type`"), "{s}");
}
