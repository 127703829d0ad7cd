//! Data-path benchmarks: normalise 1,000,000 messages; decrypt-read MB/s on a large encrypted
//! EnMicroMsg.db against raw SQLCipher reading the same rows.
//!
//! `cargo bench --bench data`; sizes via AVATAR_BENCH_NORMALISE (default 1000000) and
//! AVATAR_BENCH_DB_MESSAGES (default 1500000, about 330 MB of SQLCipher 1 pages).

use std::time::Instant;

use avatar::stages::common::message_table;
use avatar::stages::common::parallel_scan;
use avatar::stages::decrypt_read::android::{AndroidRow, convert_row};
use avatar::stages::decrypt_read::raw::{self, RawMessage, RawMeta};
use avatar::stages::decrypt_read::{DecryptReadParams, read_source_to, sqlcipher};
use avatar::stages::normalise::blocked::Blocked;
use avatar::stages::normalise::{NormaliseParams, normalise, normalise_each};
use avatar::synth::{self, History};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The history as decrypt-read would produce it from Android (same payloads and prefixes).
fn to_raw(h: &History) -> (RawMeta, Vec<RawMessage>) {
    let me = &h.cast.me;
    let mut contacts = vec![avatar::stages::decrypt_read::raw::RawContact {
        id: me.wxid.clone(),
        nickname: me.nickname.clone(),
        ..Default::default()
    }];
    for p in &h.cast.people {
        contacts.push(avatar::stages::decrypt_read::raw::RawContact {
            id: p.wxid.clone(),
            nickname: p.nickname.clone(),
            remark: p.remark.clone(),
            is_group: false,
        });
    }
    for g in &h.cast.groups {
        contacts.push(avatar::stages::decrypt_read::raw::RawContact {
            id: g.id.clone(),
            nickname: g.name.clone(),
            remark: String::new(),
            is_group: true,
        });
    }
    let msgs = h
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let e = synth::payloads::encode(m);
            let row = AndroidRow {
                msg_id: i as i64 + 1,
                msg_svr_id: Some(m.svr_id),
                msg_type: e.android_type,
                is_send: i64::from(m.is_self),
                create_time: m.timestamp * 1000,
                talker: m.conversation.as_str(),
                content: e.prefixed_content(m).into_bytes().into(),
            };
            convert_row(&row, &me.wxid).to_message()
        })
        .collect();
    (
        RawMeta {
            format: "android".into(),
            self_id: me.wxid.clone(),
            self_name: me.nickname.clone(),
            contacts,
            damage: Vec::new(),
        },
        msgs,
    )
}

/// Bytes of the files directly in `dir` (a raw table).
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn row(name: &str, value: String, note: &str) {
    println!("| {name:<44} | {value:>18} | {note}");
}

fn main() -> anyhow::Result<()> {
    let threads = rayon::current_num_threads();
    println!("data-path benchmarks ({threads} rayon threads)\n");
    println!("| {:<44} | {:>18} | note", "measure", "value");
    println!("|{}|{}|------", "-".repeat(46), "-".repeat(20));

    // ---- normalise -----------------------------------------------------------------------
    let n = env_usize("AVATAR_BENCH_NORMALISE", 1_000_000);
    let t = Instant::now();
    let h = synth::generate(n, 7, 720);
    let (meta, raw_msgs) = to_raw(&h);
    drop(h);
    row(
        "synthetic history generated",
        format!("{n} msgs"),
        &format!("{:.2} s (setup, not timed below)", t.elapsed().as_secs_f64()),
    );
    let blocked = Blocked::from_words(synth::lines::BLOCKED_WORDS)?;
    let params = NormaliseParams::default();
    // Warm-up on a slice (regex compilation, page faults), then the timed run.
    let _ = normalise(&meta, &raw_msgs[..raw_msgs.len().min(10_000)], &params, &blocked);
    // Best of 3: the machine is shared, the minimum is the least disturbed run.
    let mut secs = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = normalise(&meta, &raw_msgs, &params, &blocked);
        secs = secs.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    let (messages, stats) = out.expect("ran");
    {
        use rayon::prelude::*;
        let t = Instant::now();
        let rendered: Vec<_> = raw_msgs.par_iter().map(avatar::stages::normalise::render::render).collect();
        let render_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let masked = rendered
            .par_iter()
            .filter(|r| {
                let mut c = avatar::stages::normalise::pii::PiiCounts::default();
                avatar::stages::normalise::pii::mask(&r.text, &params.pii, &mut c).is_some()
            })
            .count();
        let pii_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let hits = rendered.par_iter().filter(|r| blocked.is_match(&r.text)).count();
        let blocked_s = t.elapsed().as_secs_f64();
        row("  of which render only", format!("{render_s:.3} s"), "");
        row("  of which PII scan only", format!("{pii_s:.3} s"), &format!("{masked} masked"));
        row("  of which blocked-word scan only", format!("{blocked_s:.3} s"), &format!("{hits} hits"));
    }
    row(
        "normalise (render+PII+blocked+sort+stats)",
        format!("{secs:.3} s"),
        &format!("{n} msgs, {:.2} M msg/s, target <= 2 s", n as f64 / secs / 1e6),
    );
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let t = Instant::now();
    raw::write_raw(&dir.path().join("raw"), &meta, &raw_msgs)?;
    let write_raw_s = t.elapsed().as_secs_f64();
    // The stage as the engine runs it: raw table in, message table out, written while the next
    // chunk renders. Best of 3 by total.
    let mut best: Option<[f64; 3]> = None;
    let mut kept = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (meta2, raw2) = raw::read_raw(&dir.path().join("raw"))?;
        let read_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut table = message_table::Writer::create(&dir.path().join("messages.db"))?;
        let stats = normalise_each(&meta2, &raw2, &params, &blocked, |chunk| table.append(&chunk))?;
        table.finish()?;
        let run_s = t.elapsed().as_secs_f64();
        let total = read_s + run_s;
        if best.is_none_or(|b| total < b[0]) {
            best = Some([total, read_s, run_s]);
        }
        kept = stats.messages as usize;
    }
    let [total, read_s, run_s] = best.expect("three rounds ran");
    let raw_mb = dir_bytes(&dir.path().join("raw"))? as f64 / 1e6;
    let table_mb = std::fs::metadata(dir.path().join("messages.db"))?.len() as f64 / 1e6;
    row(
        "normalise stage end to end (read+run+write)",
        format!("{total:.3} s"),
        &format!(
            "read raw {read_s:.2} s ({raw_mb:.0} MB) + normalise writing messages.db {run_s:.2} s ({table_mb:.0} MB); best of 3"
        ),
    );
    let t = Instant::now();
    let back = message_table::read(&dir.path().join("messages.db"))?;
    row("  (window's read of messages.db)", format!("{:.3} s", t.elapsed().as_secs_f64()), "");
    assert_eq!(back.len(), kept);
    row("  (decrypt-read's raw table write)", format!("{write_raw_s:.3} s"), "");
    assert_eq!(messages.len(), kept);
    row("  malformed / blocked masked", format!("{} / {}", stats.malformed_xml, stats.blocked_masked), "");
    drop((messages, back, raw_msgs));

    // ---- decrypt-read on a large SQLCipher database -----------------------------------------
    let m = env_usize("AVATAR_BENCH_DB_MESSAGES", 1_500_000);
    if m == 0 {
        return Ok(());
    }
    let t = Instant::now();
    let h = synth::generate(m, 11, 720);
    let db_dir = dir.path().join("android");
    let keys = synth::write_formats(dir.path(), &h, &["android".to_string()], 11, "1234567890ABCDEF", "1583567084", 1)?;
    drop(h);
    let db = db_dir.join("EnMicroMsg.db");
    let mb = std::fs::metadata(&db)?.len() as f64 / 1e6;
    row(
        "encrypted EnMicroMsg.db written",
        format!("{mb:.0} MB"),
        &format!("{m} msgs, {:.1} s (setup)", t.elapsed().as_secs_f64()),
    );

    // Raw SQLCipher: step every message row, fetching each column decrypt-read reads, with no work of ours.
    // Once on one connection (SQLCipher's speed on one core), once on one connection per core
    // over rowid ranges (the most this machine can decrypt; decrypt-read reads that way).
    let key = keys.android_key.clone();
    let open = || Ok(sqlcipher::open_android(&db, &key)?.expect("key opens"));
    let touch = |conn: &rusqlite::Connection, _: usize, lo: i64, hi: i64| {
        let mut stmt = conn.prepare(&format!(
            "SELECT msgId, msgSvrId, type, isSend, createTime, talker, content FROM message WHERE {}",
            parallel_scan::range_condition(lo, hi)
        ))?;
        let mut rows = stmt.query([])?;
        // Every column decrypt-read reads, each fetched as SQLite hands it over (no copy).
        let mut bytes = 0usize;
        while let Some(r) = rows.next()? {
            for c in 0..5 {
                std::hint::black_box(r.get_ref(c)?.as_i64_or_null()?);
            }
            bytes += r.get_ref(5)?.as_str().map(str::len).unwrap_or(0)
                + r.get_ref(6)?.as_bytes().map(<[u8]>::len).unwrap_or(0);
        }
        anyhow::Ok(bytes)
    };
    // This machine is shared and a fresh 330 MB file is still being written back: the three
    // measures are interleaved, three rounds, and each reports its best and median.
    let threads = rayon::current_num_threads();
    let p = DecryptReadParams { uin: Some("1583567084".into()), ..Default::default() };
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut text_bytes = 0;
    let out = dir.path().join("raw2");
    for _ in 0..3 {
        for (i, parts) in [1, threads].into_iter().enumerate() {
            let t = Instant::now();
            let ranges = parallel_scan::rowid_ranges(&open()?, "message", Some(parts))?;
            text_bytes = parallel_scan::scan(&ranges, open, touch)?.iter().sum::<usize>();
            times[i].push(t.elapsed().as_secs_f64());
        }
        // The last round's table is removed outside the timing.
        let _ = std::fs::remove_dir_all(&out);
        let t = Instant::now();
        read_source_to(&db, &p, &out)?;
        times[2].push(t.elapsed().as_secs_f64());
    }
    let best_median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let raw1 = best_median(&mut times[0]);
    let rawn = best_median(&mut times[1]);
    let ours = best_median(&mut times[2]);
    for (name, (best, median)) in [
        ("raw SQLCipher scan, 1 connection".to_string(), raw1),
        (format!("raw SQLCipher scan, {threads} connections"), rawn),
    ] {
        row(
            &name,
            format!("{:.1} MB/s", mb / best),
            &format!("best {best:.2} s, median {median:.2} s; {:.0} MB of text", text_bytes as f64 / 1e6),
        );
    }
    row(
        "decrypt-read (read_source_to: raw table on disk)",
        format!("{:.1} MB/s", mb / ours.0),
        &format!(
            "best {:.2} s, median {:.2} s; {:.0}% of 1-connection raw, {:.0}% of {threads}-connection raw (best)",
            ours.0,
            ours.1,
            raw1.0 / ours.0 * 100.0,
            rawn.0 / ours.0 * 100.0
        ),
    );
    row("  raw table written", format!("{:.0} MB", dir_bytes(&out)? as f64 / 1e6), "meta.json + parts");
    // decrypt-read checks the rows it read against the message table's narrowest index (SQLCipher 1
    // has no page MAC): that count alone, on a fresh connection each time, best of 3.
    let mut check = Vec::new();
    let mut counted = None;
    for _ in 0..3 {
        let conn = open()?;
        let t = Instant::now();
        counted = avatar::stages::decrypt_read::damage::indexed_count(&conn, "message");
        check.push(t.elapsed().as_secs_f64());
    }
    let check = best_median(&mut check);
    row(
        "  of which damage check (index count)",
        format!("{:.3} s", check.0),
        &format!(
            "median {:.3} s; {:.1}% of decrypt-read's best; counted {:?} rows",
            check.1,
            check.0 / ours.0 * 100.0,
            counted.and_then(Result::ok)
        ),
    );
    Ok(())
}
