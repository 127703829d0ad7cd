//! data/sample/: the shipped demo account. It must stay what `avatar synth` generates.
//! Regenerate with: `cargo test --test data sample::regenerate -- --ignored`.

use std::path::PathBuf;

use avatar::stages::decrypt_read::{DecryptReadParams, read_source};

pub const SAMPLE_MESSAGES: usize = 6000;
pub const SAMPLE_SEED: u64 = 42;
pub const SAMPLE_DAYS: u32 = 180;
pub const SAMPLE_IMEI: &str = "866123456789012";
pub const SAMPLE_UIN: &str = "1583567084";

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sample")
}

#[test]
#[ignore = "rewrites data/sample"]
fn regenerate() {
    let tmp = tempfile::tempdir().unwrap();
    let h = avatar::synth::generate(SAMPLE_MESSAGES, SAMPLE_SEED, SAMPLE_DAYS);
    avatar::synth::write_formats(tmp.path(), &h, &["android".to_string()], SAMPLE_SEED, SAMPLE_IMEI, SAMPLE_UIN, 1)
        .unwrap();
    std::fs::create_dir_all(sample_dir()).unwrap();
    std::fs::copy(tmp.path().join("android/EnMicroMsg.db"), sample_dir().join("EnMicroMsg.db")).unwrap();
    std::fs::write(sample_dir().join("blocked_words.txt"), avatar::synth::blocked_words_file()).unwrap();
}

#[test]
fn shipped_sample_is_the_seeded_history() {
    let db = sample_dir().join("EnMicroMsg.db");
    assert!(std::fs::metadata(&db).unwrap().len() < 3_200_000, "keep the sample small");
    let p = DecryptReadParams { imei: Some(SAMPLE_IMEI.into()), uin: Some(SAMPLE_UIN.into()), ..Default::default() };
    let (meta, raw) = read_source(&db, &p).unwrap();
    assert_eq!(meta.format, "android");
    let h = avatar::synth::generate(SAMPLE_MESSAGES, SAMPLE_SEED, SAMPLE_DAYS);
    assert_eq!(raw.len(), h.messages.len());
    for (r, m) in raw.iter().zip(&h.messages) {
        assert_eq!((r.id.as_str(), r.timestamp, r.is_self), (m.svr_id.to_string().as_str(), m.timestamp, m.is_self));
    }
    let own = raw.iter().filter(|m| m.is_self).count();
    let convs: std::collections::BTreeSet<&str> = raw.iter().map(|m| m.conversation.as_str()).collect();
    eprintln!("sample: {} messages, {own} by self, {} conversations", raw.len(), convs.len());
    let shipped = std::fs::read_to_string(sample_dir().join("blocked_words.txt")).unwrap();
    assert_eq!(shipped, avatar::synth::blocked_words_file());
}
