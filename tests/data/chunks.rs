//! normalise's chunked streaming gives the same table whatever the chunk length.

use avatar::stages::normalise::blocked::Blocked;
use avatar::stages::normalise::{BlockedMode, NormaliseParams, normalise, normalise_in_chunks};

/// Chunking changes nothing: any chunk length gives the same table and the same stats,
/// and `emit` sees the chunks in table order.
#[test]
fn chunks_make_the_same_table() {
    let h = avatar::synth::generate(3000, 5, 60);
    let dir = tempfile::tempdir().unwrap();
    let keys =
        avatar::synth::write_formats(dir.path(), &h, &["android".to_string()], 5, "1234567890ABCDEF", "1583567084", 1)
            .unwrap();
    let p = avatar::stages::decrypt_read::DecryptReadParams { key: Some(keys.android_key), ..Default::default() };
    let (meta, raw) = avatar::stages::decrypt_read::read_source(&dir.path().join("android"), &p).unwrap();
    let blocked = Blocked::from_words(avatar::synth::lines::BLOCKED_WORDS).unwrap();
    let params = NormaliseParams { blocked_mode: BlockedMode::Drop, ..Default::default() };
    let (whole, whole_stats) = normalise(&meta, &raw, &params, &blocked);
    assert!(whole_stats.blocked_dropped > 0 && whole.len() > 2000);
    for chunk_len in [1, 7, 1000] {
        let mut chunks = Vec::new();
        let stats = normalise_in_chunks(&meta, &raw, &params, &blocked, chunk_len, |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
        assert!(chunks.iter().all(|c| c.len() <= chunk_len));
        assert!(chunks.concat() == whole, "chunk length {chunk_len}");
        assert_eq!(stats, whole_stats);
    }
}
