//! PC WeChat 3.x: `<wxid>/Msg/MicroMsg.db` + `<wxid>/Msg/Multi/MSG0.db, MSG1.db`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::synth::bytes_extra::encode_bytes_extra;
use crate::synth::encrypted::{self, Cipher};
use crate::synth::history::History;
use crate::synth::payloads::encode;

const MSG_SCHEMA: &str = "
CREATE TABLE MSG (
 localId INTEGER PRIMARY KEY AUTOINCREMENT, TalkerId INT DEFAULT 0, MsgSvrID INT, Type INT, SubType INT,
 IsSender INT, CreateTime INT, Sequence INT DEFAULT 0, StatusEx INT DEFAULT 0, FlagEx INT, Status INT,
 MsgServerSeq INT, MsgSequence INT, StrTalker TEXT, StrContent TEXT, DisplayContent TEXT,
 Reserved0 INT DEFAULT 0, Reserved1 INT DEFAULT 0, Reserved2 INT DEFAULT 0, Reserved3 INT DEFAULT 0,
 Reserved4 TEXT, Reserved5 TEXT, Reserved6 TEXT, CompressContent BLOB, BytesExtra BLOB, BytesTrans BLOB);
CREATE TABLE Name2ID(UsrName TEXT PRIMARY KEY);
CREATE TABLE DBInfo(tableIndex INTEGER PRIMARY KEY, tableVersion INTEGER, tableDesc TEXT);
";

const MICROMSG_SCHEMA: &str = "
CREATE TABLE Contact(UserName TEXT PRIMARY KEY, Alias TEXT, EncryptUserName TEXT, DelFlag INTEGER DEFAULT 0, Type INTEGER DEFAULT 0, VerifyFlag INTEGER DEFAULT 0, Reserved1 INTEGER DEFAULT 0, Reserved2 INTEGER DEFAULT 0, Reserved3 TEXT, Reserved4 TEXT, Remark TEXT, NickName TEXT, LabelIDList TEXT, DomainList TEXT, ChatRoomType int, PYInitial TEXT, QuanPin TEXT, RemarkPYInitial TEXT, RemarkQuanPin TEXT, BigHeadImgUrl TEXT, SmallHeadImgUrl TEXT, HeadImgMd5 TEXT, ChatRoomNotify INTEGER DEFAULT 0, Reserved5 INTEGER DEFAULT 0, Reserved6 TEXT, Reserved7 TEXT, ExtraBuf BLOB, Reserved8 INTEGER DEFAULT 0, Reserved9 INTEGER DEFAULT 0, Reserved10 TEXT, Reserved11 TEXT);
CREATE TABLE ChatRoom(ChatRoomName TEXT PRIMARY KEY, UserNameList TEXT, DisplayNameList TEXT, ChatRoomFlag int Default 0, Owner INTEGER DEFAULT 0, IsShowName INTEGER DEFAULT 0, SelfDisplayName TEXT, Reserved1 INTEGER DEFAULT 0, Reserved2 TEXT, Reserved3 INTEGER DEFAULT 0, Reserved4 TEXT, Reserved5 INTEGER DEFAULT 0, Reserved6 TEXT, RoomData BLOB, Reserved7 INTEGER DEFAULT 0, Reserved8 TEXT);
";

fn fill_micromsg(conn: &Connection, h: &History) -> anyhow::Result<()> {
    conn.execute_batch(MICROMSG_SCHEMA)?;
    conn.execute_batch("BEGIN")?;
    let mut c = conn.prepare(
        "INSERT INTO Contact (UserName, Alias, Type, Reserved1, Remark, NickName) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let me = &h.cast.me;
    c.execute(params![me.wxid, me.alias, 1, 1, "", me.nickname])?;
    for p in &h.cast.people {
        c.execute(params![p.wxid, p.alias, if p.friend { 3 } else { 4 }, i64::from(p.friend), p.remark, p.nickname])?;
    }
    let mut r = conn.prepare(
        "INSERT INTO ChatRoom (ChatRoomName, UserNameList, DisplayNameList, SelfDisplayName) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for g in &h.cast.groups {
        c.execute(params![g.id, "", 2, 1, "", g.name])?;
        let mut ids = vec![me.wxid.clone()];
        let mut names = vec![me.nickname.clone()];
        for &i in &g.members {
            ids.push(h.cast.people[i].wxid.clone());
            names.push(h.cast.people[i].nickname.clone());
        }
        r.execute(params![g.id, ids.join("^G"), names.join("^G"), me.nickname])?;
    }
    drop((c, r));
    conn.execute_batch("COMMIT")?;
    Ok(())
}

fn fill_shard(conn: &Connection, h: &History, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    conn.execute_batch(MSG_SCHEMA)?;
    conn.execute_batch("BEGIN")?;
    let start_ms = h.messages.get(range.start).map(|m| m.timestamp * 1000).unwrap_or(0);
    conn.execute("INSERT INTO DBInfo VALUES (1, ?1, 'Start Time')", [start_ms])?;
    let mut names: Vec<String> = Vec::new();
    let mut ins = conn.prepare(
        "INSERT INTO MSG (TalkerId, MsgSvrID, Type, SubType, IsSender, CreateTime, Sequence, StatusEx, FlagEx, Status, StrTalker, StrContent, DisplayContent, CompressContent, BytesExtra)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut name_ins = conn.prepare("INSERT OR IGNORE INTO Name2ID (UsrName) VALUES (?1)")?;
    let mut last_ms = 0i64;
    for m in &h.messages[range] {
        let e = encode(m);
        let talker_id = match names.iter().position(|n| n == &m.conversation) {
            Some(i) => i + 1,
            None => {
                name_ins.execute([&m.conversation])?;
                names.push(m.conversation.clone());
                names.len()
            }
        };
        let mut seq = m.timestamp * 1000;
        if seq <= last_ms {
            seq = last_ms + 1;
        }
        last_ms = seq;
        let source = "<msgsource><silence>0</silence><membercount>0</membercount></msgsource>";
        let extra = if m.is_group && !m.is_self && e.pc3_type != 10000 {
            encode_bytes_extra(&[(1, m.sender.as_str()), (7, source)])
        } else {
            encode_bytes_extra(&[(7, source)])
        };
        let compressed = e.pc3_compress.as_ref().map(|x| lz4_flex::block::compress(x.as_bytes()));
        ins.execute(params![
            talker_id as i64,
            m.svr_id,
            e.pc3_type,
            e.pc3_sub,
            i64::from(m.is_self),
            m.timestamp,
            seq,
            if m.is_self { 2 } else { 3 },
            m.conversation,
            e.pc3_str,
            e.pc3_display,
            compressed,
            extra
        ])?;
    }
    drop((ins, name_ins));
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Write the account under `root/<self wxid>/Msg/`; `shards` MSG files split by time.
/// `key` None writes decrypted copies. Returns the account folder.
pub fn write(
    root: &Path,
    h: &History,
    key: Option<&[u8; 32]>,
    shards: usize,
    salt_seed: u8,
) -> anyhow::Result<PathBuf> {
    let msg_dir = root.join(&h.cast.me.wxid).join("Msg");
    std::fs::create_dir_all(msg_dir.join("Multi"))?;
    let create = |path: &Path, salt: u8, f: &dyn Fn(&Connection) -> anyhow::Result<()>| -> anyhow::Result<()> {
        match key {
            Some(k) => encrypted::create_encrypted(path, Cipher::Pc3, k, [salt; 16], |c| f(c)),
            None => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                f(&Connection::open(path)?)
            }
        }
    };
    create(&msg_dir.join("MicroMsg.db"), salt_seed, &|c| fill_micromsg(c, h))?;
    let shards = shards.max(1);
    let per = h.messages.len().div_ceil(shards).max(1);
    for s in 0..shards {
        let range = (s * per).min(h.messages.len())..((s + 1) * per).min(h.messages.len());
        let path = msg_dir.join("Multi").join(format!("MSG{s}.db"));
        create(&path, salt_seed.wrapping_add(1 + s as u8), &|c| fill_shard(c, h, range.clone()))?;
    }
    Ok(root.join(&h.cast.me.wxid))
}
