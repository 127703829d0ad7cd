//! WeChat 4.x: `<wxid>_<suffix>/db_storage/message/message_N.db` + `contact/contact.db`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::stages::decrypt_read::pc4::table_for;
use crate::synth::encrypted::{self, Cipher};
use crate::synth::history::History;
use crate::synth::payloads::encode;

const CONTACT_SCHEMA: &str = "
CREATE TABLE contact(id INTEGER PRIMARY KEY, username TEXT, local_type INTEGER, alias TEXT, encrypt_username TEXT, flag INTEGER, delete_flag INTEGER, verify_flag INTEGER, remark TEXT, remark_quan_pin TEXT, remark_pin_yin_initial TEXT, nick_name TEXT, pin_yin_initial TEXT, quan_pin TEXT, big_head_url TEXT, small_head_url TEXT, head_img_md5 TEXT, chat_room_notify INTEGER, is_in_chat_room INTEGER, description TEXT, extra_buffer BLOB, chat_room_type INTEGER);
CREATE TABLE chat_room(id INTEGER PRIMARY KEY, username TEXT, owner TEXT, ext_buffer BLOB);
CREATE TABLE chatroom_member(room_id INTEGER, member_id INTEGER, CONSTRAINT room_member UNIQUE(room_id, member_id));
";

const MESSAGE_SCHEMA: &str = "
CREATE TABLE Name2Id(user_name TEXT PRIMARY KEY);
CREATE TABLE TimeStamp(timestamp INTEGER);
CREATE TABLE DeleteInfo(chat_name_id INTEGER, delete_table_name TEXT, CONSTRAINT UNIQUE_CHAT_DELETE UNIQUE(chat_name_id, delete_table_name));
CREATE TABLE SendInfo(chat_name_id INTEGER, msg_local_id INTEGER);
";

fn fill_contact(conn: &Connection, h: &History) -> anyhow::Result<()> {
    conn.execute_batch(CONTACT_SCHEMA)?;
    conn.execute_batch("BEGIN")?;
    let mut c = conn.prepare("INSERT INTO contact (username, local_type, alias, remark, nick_name, is_in_chat_room) VALUES (?1, ?2, ?3, ?4, ?5, 0)")?;
    let me = &h.cast.me;
    c.execute(params![me.wxid, 1, me.alias, "", me.nickname])?;
    for p in &h.cast.people {
        c.execute(params![p.wxid, if p.friend { 1 } else { 3 }, p.alias, p.remark, p.nickname])?;
    }
    let mut r = conn.prepare("INSERT INTO chat_room (username, owner) VALUES (?1, ?2)")?;
    for g in &h.cast.groups {
        c.execute(params![g.id, 2, "", "", g.name])?;
        r.execute(params![g.id, h.cast.people[g.members[0]].wxid])?;
    }
    drop((c, r));
    conn.execute_batch("COMMIT")?;
    Ok(())
}

fn fill_shard(conn: &Connection, h: &History, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    conn.execute_batch(MESSAGE_SCHEMA)?;
    conn.execute_batch("BEGIN")?;
    let start = h.messages.get(range.start).map(|m| m.timestamp).unwrap_or(0);
    conn.execute("INSERT INTO TimeStamp VALUES (?1)", [start])?;
    let mut ids: HashMap<String, i64> = HashMap::new();
    let mut tables: HashMap<String, String> = HashMap::new();
    let mut last_seq = 0i64;
    for m in &h.messages[range] {
        for name in [&m.conversation, &m.sender] {
            if !ids.contains_key(name.as_str()) {
                conn.execute("INSERT INTO Name2Id (user_name) VALUES (?1)", [name])?;
                ids.insert(name.clone(), conn.last_insert_rowid());
            }
        }
        let table = tables.entry(m.conversation.clone()).or_insert_with(|| table_for(&m.conversation)).clone();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table}(local_id INTEGER PRIMARY KEY AUTOINCREMENT, server_id INTEGER, local_type INTEGER, sort_seq INTEGER, real_sender_id INTEGER, create_time INTEGER, status INTEGER, upload_status INTEGER, download_status INTEGER, server_seq INTEGER, origin_source INTEGER, source TEXT, message_content TEXT, compress_content TEXT, packed_info_data BLOB, WCDB_CT_message_content INTEGER DEFAULT NULL, WCDB_CT_source INTEGER DEFAULT NULL);"
        ))?;
        let e = encode(m);
        let content = e.prefixed_content(m);
        // Text stays plain; XML payloads are zstd frames, as WeChat 4.x stores them.
        let value: rusqlite::types::Value = if e.base == 1 {
            rusqlite::types::Value::Text(content)
        } else {
            rusqlite::types::Value::Blob(zstd::bulk::compress(content.as_bytes(), 3)?)
        };
        let mut seq = m.timestamp * 1000;
        if seq <= last_seq {
            seq = last_seq + 1;
        }
        last_seq = seq;
        conn.execute(
            &format!("INSERT INTO {table} (server_id, local_type, sort_seq, real_sender_id, create_time, status, upload_status, download_status, server_seq, origin_source, source, message_content, WCDB_CT_message_content) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, 0, 0, '', ?7, ?8)"),
            params![m.svr_id, e.v4_local_type(), seq, ids[&m.sender], m.timestamp, if m.is_self { 2 } else { 4 }, value, if e.base == 1 { 0 } else { 4 }],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Write the account folder `root/<wxid>_1a2b/`; `key` None writes decrypted copies.
pub fn write(
    root: &Path,
    h: &History,
    key: Option<&[u8; 32]>,
    shards: usize,
    salt_seed: u8,
) -> anyhow::Result<PathBuf> {
    let account = root.join(format!("{}_1a2b", h.cast.me.wxid));
    let storage = account.join("db_storage");
    std::fs::create_dir_all(storage.join("message"))?;
    std::fs::create_dir_all(storage.join("contact"))?;
    let create = |path: &Path, salt: u8, f: &dyn Fn(&Connection) -> anyhow::Result<()>| -> anyhow::Result<()> {
        match key {
            Some(k) => encrypted::create_encrypted(path, Cipher::Pc4, k, [salt; 16], |c| f(c)),
            None => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                f(&Connection::open(path)?)
            }
        }
    };
    create(&storage.join("contact").join("contact.db"), salt_seed, &|c| fill_contact(c, h))?;
    let shards = shards.max(1);
    let per = h.messages.len().div_ceil(shards).max(1);
    for s in 0..shards {
        let range = (s * per).min(h.messages.len())..((s + 1) * per).min(h.messages.len());
        let path = storage.join("message").join(format!("message_{s}.db"));
        create(&path, salt_seed.wrapping_add(1 + s as u8), &|c| fill_shard(c, h, range.clone()))?;
    }
    Ok(account)
}
