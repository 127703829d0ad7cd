//! Damaged databases, per encrypted format: truncated, one page of the message table flipped,
//! one page of the contact table flipped. Each either fails naming the file and what was lost,
//! or (Android, `on_damage = "report"`) reads what is left and lists the loss; never a table
//! silently short.

use std::path::{Path, PathBuf};

use avatar::stages::decrypt_read::damage::OnDamage;
use avatar::stages::decrypt_read::keys::{self, Flavour};
use avatar::stages::decrypt_read::{DecryptReadParams, key_material, read_source};
use avatar::stages::normalise::blocked::Blocked;
use avatar::stages::normalise::{NormaliseParams, normalise};

const MESSAGES: usize = 400;

struct Account {
    _dir: tempfile::TempDir,
    root: PathBuf,
    params: DecryptReadParams,
}

fn account(format: &str) -> Account {
    let dir = tempfile::tempdir().unwrap();
    let h = avatar::synth::generate(MESSAGES, 11, 20);
    let keys =
        avatar::synth::write_formats(dir.path(), &h, &[format.to_string()], 11, "1234567890ABCDEF", "77", 1).unwrap();
    let key = if format == "android" { keys.android_key } else { keys.pc_key };
    let params = DecryptReadParams { key: Some(key), ..Default::default() };
    Account { root: dir.path().join(format), _dir: dir, params }
}

fn find(root: &Path, name: &str) -> PathBuf {
    avatar::stages::decrypt_read::locate::files_under(root, 6)
        .unwrap()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("{name} under {}", root.display()))
}

/// The page numbers (1-based) and page size of `table`'s pages, leaves first.
fn pages_of(path: &Path, flavour: Flavour, p: &DecryptReadParams, table: &str) -> (Vec<u64>, u64) {
    let conn = keys::open(path, flavour, &key_material(p).unwrap()).unwrap();
    let size = conn.query_row("SELECT pgsize FROM dbstat LIMIT 1", [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    let mut stmt =
        conn.prepare("SELECT pageno FROM dbstat WHERE name = ?1 ORDER BY pagetype = 'leaf' DESC, pageno").unwrap();
    let pages: Vec<u64> = stmt.query_map([table], |r| r.get::<_, i64>(0)).unwrap().map(|p| p.unwrap() as u64).collect();
    assert!(!pages.is_empty(), "{table} has pages");
    (pages, size)
}

/// Flip bytes at the start of page `page` (its B-tree header): the page no longer decrypts (PC:
/// its HMAC fails) or no longer parses (Android: SQLCipher 1 decrypts it to noise).
fn flip_page(path: &Path, page: u64, page_size: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = ((page - 1) * page_size) as usize + if page == 1 { 24 } else { 4 };
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

fn err(root: &Path, p: &DecryptReadParams) -> String {
    let e = read_source(root, p).expect_err("a damaged database must not read as if whole");
    format!("{e:#}")
}

#[test]
fn truncated_databases_with_the_right_key_are_damaged_not_wrong_keys() {
    for (format, file) in [("android", "EnMicroMsg.db"), ("pc3", "MSG0.db"), ("pc4", "message_0.db")] {
        let acc = account(format);
        let path = find(&acc.root, file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let s = err(&acc.root, &acc.params);
        assert!(s.contains(file) && s.contains("damaged") && s.contains("key is right"), "{format}: {s}");
        assert!(!s.contains("tried"), "{format}: not a wrong key: {s}");
        assert!(!s.contains('\n'), "{format}: one line: {s}");
    }
}

#[test]
fn a_flipped_message_page_fails_naming_the_file_and_the_table() {
    for (format, file, flavour, table) in [
        ("android", "EnMicroMsg.db", Flavour::Android, "message"),
        ("pc3", "MSG0.db", Flavour::Pc3, "MSG"),
        ("pc4", "message_0.db", Flavour::Pc4, ""),
    ] {
        let acc = account(format);
        let path = find(&acc.root, file);
        let table = if table.is_empty() { biggest_msg_table(&path, &acc.params) } else { table.to_string() };
        let (pages, size) = pages_of(&path, flavour, &acc.params, &table);
        flip_page(&path, pages[pages.len() / 2], size);
        let s = err(&acc.root, &acc.params);
        assert!(s.contains(file) && s.contains(&format!("table {table}")) && s.contains("damaged"), "{format}: {s}");
        assert!(!s.contains('\n'), "{format}: one line: {s}");
    }
}

/// 4.x keeps one table per conversation: the largest has the most pages to damage.
fn biggest_msg_table(path: &Path, p: &DecryptReadParams) -> String {
    let conn = keys::open(path, Flavour::Pc4, &key_material(p).unwrap()).unwrap();
    conn.query_row(
        "SELECT name FROM dbstat WHERE name LIKE 'Msg_%' GROUP BY name ORDER BY count(*) DESC LIMIT 1",
        [],
        |r| r.get::<_, String>(0),
    )
    .unwrap()
}

#[test]
fn a_flipped_contact_page_fails_naming_the_file_and_the_table() {
    for (format, file, flavour, table) in [
        ("android", "EnMicroMsg.db", Flavour::Android, "rcontact"),
        ("pc3", "MicroMsg.db", Flavour::Pc3, "Contact"),
        ("pc4", "contact.db", Flavour::Pc4, "contact"),
    ] {
        let acc = account(format);
        let path = find(&acc.root, file);
        let (pages, size) = pages_of(&path, flavour, &acc.params, table);
        flip_page(&path, pages[0], size);
        let s = err(&acc.root, &acc.params);
        assert!(s.contains(file) && s.contains(&format!("table {table}")) && s.contains("damaged"), "{format}: {s}");
    }
}

/// Android with `on_damage = "report"`: what is left is read, and what was lost is listed in
/// meta.json and normalise's stats, per conversation; the rows read are exactly the rows kept.
#[test]
fn android_report_mode_lists_exactly_what_was_lost() {
    let acc = account("android");
    let path = find(&acc.root, "EnMicroMsg.db");
    let whole = read_source(&acc.root, &acc.params).unwrap().1;
    assert_eq!(whole.len(), MESSAGES);
    let (pages, size) = pages_of(&path, Flavour::Android, &acc.params, "message");
    flip_page(&path, pages[pages.len() / 3], size);
    let p = DecryptReadParams { on_damage: OnDamage::Report, ..acc.params.clone() };
    let (meta, raw) = read_source(&acc.root, &p).unwrap();
    assert!(raw.len() < MESSAGES, "rows were lost");
    let d = meta.damage.iter().find(|d| d.table == "message").expect("the loss is listed");
    assert_eq!(d.file, "EnMicroMsg.db");
    assert_eq!(d.rows_expected, Some(MESSAGES as u64));
    assert_eq!(d.rows_read, raw.len() as u64);
    // Per conversation, what the index lists minus what was read adds up to the loss.
    let listed: i64 = d.by_conversation.values().sum();
    assert_eq!(listed, (MESSAGES - raw.len()) as i64, "{:?}", d.by_conversation);
    for (conv, lost) in &d.by_conversation {
        let had = whole.iter().filter(|m| m.conversation == conv.as_str()).count() as i64;
        let has = raw.iter().filter(|m| m.conversation == conv.as_str()).count() as i64;
        assert_eq!(had - has, *lost, "{conv}");
    }
    let (_, stats) = normalise(&meta, &raw, &NormaliseParams::default(), &Blocked::none());
    assert_eq!(stats.damage, meta.damage, "the loss reaches stats.json");
    // The same file fails by default.
    let s = err(&acc.root, &acc.params);
    assert!(s.contains("EnMicroMsg.db") && s.contains("table message") && s.contains("on_damage"), "{s}");

    // A damaged contact table: names are lost, messages are not; both are said.
    let acc = account("android");
    let path = find(&acc.root, "EnMicroMsg.db");
    let (pages, size) = pages_of(&path, Flavour::Android, &acc.params, "rcontact");
    flip_page(&path, pages[0], size);
    let p = DecryptReadParams { on_damage: OnDamage::Report, ..acc.params.clone() };
    let (meta, raw) = read_source(&acc.root, &p).unwrap();
    assert_eq!(raw.len(), MESSAGES);
    let d = meta.damage.iter().find(|d| d.table == "rcontact").expect("the contact loss is listed");
    assert!(d.rows_read < d.rows_expected.unwrap(), "{d:?}");
}

#[test]
fn empty_and_text_files_are_described_not_called_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("chat.csv");
    std::fs::write(&empty, b"").unwrap();
    let s = err(&empty, &DecryptReadParams::default());
    assert!(s.contains("chat.csv") && s.contains("empty file"), "{s}");
    assert!(!s.contains("encrypted"), "{s}");
    let text = dir.path().join("notes");
    std::fs::write(&text, "a,b,c\n1,2,3\n".repeat(50)).unwrap();
    let s = err(&text, &DecryptReadParams::default());
    assert!(s.contains("notes") && s.contains("text file") && s.contains("3 comma-separated"), "{s}");
    assert!(!s.contains("1,2,3"), "the file's content stays out of errors: {s}");
    let txt = dir.path().join("todo.txt");
    std::fs::write(&txt, "buy milk\ncall mum\n").unwrap();
    let s = err(&txt, &DecryptReadParams::default());
    assert!(s.contains("todo.txt") && s.contains("not a WeChatMsg TXT export"), "{s}");
}
