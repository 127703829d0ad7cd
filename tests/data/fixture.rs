//! One synthetic account written in every format, shared by the tests of this binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use avatar::stages::common::message::{Message, MessageKind};
use avatar::stages::decrypt_read::{DecryptReadParams, read_source};
use avatar::stages::normalise::blocked::Blocked;
use avatar::stages::normalise::{NormaliseParams, Stats, normalise};
use avatar::synth::{self, History, SynthKeys};

pub const SEED: u64 = 5;
pub const MESSAGES: usize = 2000;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub history: History,
    pub keys: SynthKeys,
}

impl Fixture {
    pub fn path(&self, format: &str) -> PathBuf {
        self.dir.path().join(format)
    }
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = synth::generate(MESSAGES, SEED, 90);
        let formats: Vec<String> = synth::ALL_FORMATS.iter().map(|s| s.to_string()).collect();
        let keys = synth::write_formats(dir.path(), &history, &formats, SEED, "866123456789012", "1583567084", 2)
            .expect("synth writes");
        Fixture { dir, history, keys }
    })
}

/// Params that open format `f` of the fixture.
pub fn params_for(f: &str) -> DecryptReadParams {
    let fx = fixture();
    let mut p = DecryptReadParams::default();
    match f {
        "android" => {
            p.imei = Some(fx.keys.imei.clone());
            p.uin = Some(fx.keys.uin.clone());
        }
        "pc3" | "pc4" => p.key = Some(fx.keys.pc_key.clone()),
        _ => {}
    }
    p
}

pub fn read_normalised(path: &Path, p: &DecryptReadParams) -> Vec<Message> {
    read_with_stats(path, p).1
}

/// The detected format, the normalised messages and normalise's stats of one source.
pub fn read_with_stats(path: &Path, p: &DecryptReadParams) -> (String, Vec<Message>, Stats) {
    let (meta, raw) = read_source(path, p).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let (messages, stats) = normalise(&meta, &raw, &NormaliseParams::default(), &Blocked::none());
    (meta.format, messages, stats)
}

/// (kind, text) of every message of a conversation, in time order.
pub fn conversation_rows(got: &[Message], conversation: &str) -> Vec<(MessageKind, String)> {
    got.iter().filter(|m| m.conversation == conversation).map(|m| (m.kind, m.text.clone())).collect()
}
