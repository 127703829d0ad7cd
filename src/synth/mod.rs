//! Synthetic WeChat histories: a persona, friends and groups over months, every message type,
//! written in every source format decrypt-read supports (encrypted with WeChat's real SQLCipher
//! parameters). Used by tests, the demo data and benches; mounted as `avatar synth`.

pub mod bytes_extra;
pub mod encrypted;
pub mod history;
pub mod lines;
pub mod payloads;
pub mod people;
pub mod writers;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cli::output::outln;
use crate::stages::decrypt_read::sqlcipher;
pub use history::{History, generate};

/// Every format `synth` can write (the names decrypt-read's `format` param uses).
pub const ALL_FORMATS: &[&str] =
    &["android", "sqlite", "pc3", "pc4", "seed-csv", "wechatmsg-csv", "wechatmsg-txt", "pywxdump-csv"];

/// `avatar synth`: write a synthetic WeChat history in every supported source format.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Output directory (one sub-folder per format, plus keys.json).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Number of messages.
    #[arg(long, default_value_t = 6000)]
    pub messages: usize,
    /// Random seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Days the history spans.
    #[arg(long, default_value_t = 180)]
    pub days: u32,
    /// Formats to write, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', default_values_t = ALL_FORMATS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub formats: Vec<String>,
    /// Android IMEI for the EnMicroMsg.db key (a made-up one by default).
    #[arg(long, default_value = "866123456789012")]
    pub imei: String,
    /// Android uin for the EnMicroMsg.db key.
    #[arg(long, default_value = "1583567084")]
    pub uin: String,
    /// Number of message shards for PC 3.x / 4.x.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
}

/// Key material of a generated account (written to keys.json).
#[derive(Debug, Clone, Serialize)]
pub struct SynthKeys {
    pub imei: String,
    pub uin: String,
    /// md5(imei + uin)[..7], the EnMicroMsg.db passphrase.
    pub android_key: String,
    /// The 32-byte PC 3.x / 4.x key as hex.
    pub pc_key: String,
    pub self_id: String,
    pub self_name: String,
}

/// Deterministic per-seed bytes for salts and the PC key.
fn seeded_bytes(seed: u64, what: &str) -> [u8; 32] {
    *blake3::hash(format!("avatar-synth/{what}/{seed}").as_bytes()).as_bytes()
}

pub fn pc_key(seed: u64) -> [u8; 32] {
    seeded_bytes(seed, "pc-key")
}

/// Write `h` in `formats` under `out`; returns the key material.
pub fn write_formats(
    out: &Path,
    h: &History,
    formats: &[String],
    seed: u64,
    imei: &str,
    uin: &str,
    shards: usize,
) -> anyhow::Result<SynthKeys> {
    for f in formats {
        if !ALL_FORMATS.contains(&f.as_str()) {
            bail!("unknown format `{f}` (known: {})", ALL_FORMATS.join(", "));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let keys = SynthKeys {
        imei: imei.to_string(),
        uin: uin.to_string(),
        android_key: sqlcipher::android_key(imei, uin),
        pc_key: hex::encode(pc_key(seed)),
        self_id: h.cast.me.wxid.clone(),
        self_name: h.cast.me.nickname.clone(),
    };
    let salt = |what: &str| -> [u8; 16] { seeded_bytes(seed, what)[..16].try_into().expect("16 of 32 bytes") };
    let want = |f: &str| formats.iter().any(|x| x == f);
    let dir = |name: &str| -> anyhow::Result<PathBuf> {
        let d = out.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("replacing {}", d.display()))?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    if want("android") {
        writers::android::write_encrypted(
            &dir("android")?.join("EnMicroMsg.db"),
            h,
            &keys.android_key,
            salt("android"),
        )?;
    }
    if want("sqlite") {
        writers::android::write_plain(&dir("sqlite")?.join("EnMicroMsg.db"), h)?;
    }
    let pk = pc_key(seed);
    let salt_seed = salt("pc")[0];
    if want("pc3") {
        writers::pc3::write(&dir("pc3")?, h, Some(&pk), shards, salt_seed)?;
    }
    if want("pc4") {
        writers::pc4::write(&dir("pc4")?, h, Some(&pk), shards, salt_seed)?;
    }
    if want("seed-csv") {
        writers::exports::write_seed_csv(&dir("seed-csv")?, h)?;
    }
    let csv_dir = if want("wechatmsg-csv") { Some(dir("wechatmsg-csv")?) } else { None };
    let txt_dir = if want("wechatmsg-txt") { Some(dir("wechatmsg-txt")?) } else { None };
    if csv_dir.is_some() || txt_dir.is_some() {
        writers::exports::write_wechatmsg(csv_dir.as_deref(), txt_dir.as_deref(), h)?;
    }
    if want("pywxdump-csv") {
        writers::exports::write_pywxdump(&dir("pywxdump-csv")?, h)?;
    }
    std::fs::write(out.join("keys.json"), serde_json::to_vec_pretty(&keys)?)?;
    std::fs::write(out.join("blocked_words.txt"), blocked_words_file())?;
    Ok(keys)
}

/// The insult list the persona sometimes uses, as shipped in data/sample/blocked_words.txt.
pub fn blocked_words_file() -> String {
    let mut s = String::from("# Insults the synthetic persona sometimes uses when friends bait him (one per line).\n");
    for w in lines::BLOCKED_WORDS {
        s.push_str(w);
        s.push('\n');
    }
    s
}

/// Entry point of `avatar synth`.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let h = generate(args.messages, args.seed, args.days);
    let keys = write_formats(&args.out, &h, &args.formats, args.seed, &args.imei, &args.uin, args.shards)?;
    let self_count = h.messages.iter().filter(|m| m.is_self).count();
    outln!(
        "wrote {} messages ({} by {}) in {} to {}; Android key {} (imei {}, uin {}); keys in keys.json",
        h.messages.len(),
        self_count,
        keys.self_name,
        args.formats.join(", "),
        args.out.display(),
        keys.android_key,
        keys.imei,
        keys.uin
    );
    Ok(())
}
