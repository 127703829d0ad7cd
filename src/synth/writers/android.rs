//! Android `EnMicroMsg.db`: tables message, rcontact, userinfo, chatroom.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::synth::encrypted::{self, Cipher};
use crate::synth::history::History;
use crate::synth::payloads::encode;

/// Verbatim column layouts from the reference's schema dump.
pub const SCHEMA: &str = "
CREATE TABLE message ( msgId INTEGER PRIMARY KEY, msgSvrId INTEGER , type INT, status INT, isSend INT, isShowTimer INTEGER, createTime INTEGER, talker TEXT, content TEXT, imgPath TEXT, reserved TEXT, lvbuffer BLOB, transContent TEXT,transBrandWording TEXT ,talkerId INTEGER, bizClientMsgId TEXT, bizChatId INTEGER DEFAULT -1, bizChatUserId TEXT, msgSeq INTEGER, flag INT, solitaireFoldInfo BLOB, historyId TEXT);
CREATE INDEX messageSvrIdIndex ON message ( msgSvrId );
CREATE INDEX messageCreateTaklerTypeTimeIndex ON message ( talker,type,createTime );
CREATE TABLE rcontact (  username TEXT default ''  PRIMARY KEY ,  alias TEXT default '' ,  conRemark TEXT default '' ,  domainList TEXT default '' ,  nickname TEXT default '' ,  pyInitial TEXT default '' ,  quanPin TEXT default '' ,  showHead INTEGER default '0' ,  type INTEGER default '0' ,  uiType LONG default '0' ,  weiboFlag INTEGER default '0' ,  weiboNickname TEXT default '' ,  conRemarkPYFull TEXT default '' ,  conRemarkPYShort TEXT default '' ,  lvbuff BLOB,  verifyFlag INTEGER default '0' ,  encryptUsername TEXT default '' ,  chatroomFlag INTEGER,  deleteFlag INTEGER default '0' ,  contactLabelIds TEXT default '' ,  descWordingId TEXT default '' ,  openImAppid TEXT,  sourceExtInfo TEXT,  ticket TEXT default '' ,  usernameFlag LONG default '0' ,  contactExtra BLOB, createTime LONG default '0');
CREATE TABLE userinfo ( id INTEGER PRIMARY KEY, type INT, value TEXT );
CREATE TABLE chatroom (  chatroomname TEXT default ''  PRIMARY KEY ,  addtime LONG,  memberlist TEXT,  displayname TEXT,  chatroomnick TEXT,  roomflag INTEGER,  roomowner TEXT,  roomdata BLOB,  isShowname INTEGER,  selfDisplayName TEXT,  style INTEGER,  chatroomdataflag INTEGER,  modifytime LONG,  chatroomnotice TEXT,  xmlChatroomnotice TEXT,  chatroomVersion INTEGER,  chatroomnoticeEditor TEXT,  chatroomnoticePublishTime LONG,  chatroomNoticeNew INTEGER,  chatroomLocalVersion LONG,  chatroomStatus INTEGER default '0' ,  memberCount INTEGER default '-1' ,  chatroomfamilystatusmodifytime LONG default '0' ,  associateOpenIMRoomName TEXT,  openIMRoomMigrateStatus INTEGER default '0' ,  saveByteVersion TEXT,  handleByteVersion TEXT,  roomInfoDetailResByte BLOB,  oldChatroomVersion INTEGER,  localChatRoomWatchMembers BLOB,  spamStatus INTEGER default '0' ,  compactFlag LONG default '0' );
";

/// Fill an open connection with the history.
pub fn fill(conn: &Connection, h: &History) -> anyhow::Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch("BEGIN")?;
    {
        let me = &h.cast.me;
        let mut ui = conn.prepare("INSERT INTO userinfo (id, type, value) VALUES (?1, 3, ?2)")?;
        ui.execute(params![2, me.wxid])?;
        ui.execute(params![4, me.nickname])?;
        ui.execute(params![6, "+86 138****5678"])?;
        let mut rc = conn.prepare("INSERT INTO rcontact (username, alias, conRemark, nickname, type, chatroomFlag) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        rc.execute(params![me.wxid, me.alias, "", me.nickname, 1, 0])?;
        for p in &h.cast.people {
            rc.execute(params![p.wxid, p.alias, p.remark, p.nickname, if p.friend { 3 } else { 4 }, 0])?;
        }
        let mut cr = conn.prepare("INSERT INTO chatroom (chatroomname, addtime, memberlist, displayname, roomowner, selfDisplayName, memberCount) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        for g in &h.cast.groups {
            rc.execute(params![g.id, "", "", g.name, 2, 1])?;
            let mut members: Vec<&str> = vec![me.wxid.as_str()];
            members.extend(g.members.iter().map(|&i| h.cast.people[i].wxid.as_str()));
            let names: Vec<&str> = g.members.iter().map(|&i| h.cast.people[i].nickname.as_str()).collect();
            cr.execute(params![
                g.id,
                1_700_000_000_000i64,
                members.join(";"),
                names.join("、"),
                members[1],
                me.nickname,
                members.len() as i64
            ])?;
        }
        let mut msg = conn.prepare(
            "INSERT INTO message (msgSvrId, type, status, isSend, isShowTimer, createTime, talker, content, imgPath, talkerId, bizChatId, flag)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, 0, -1, 0)",
        )?;
        for m in &h.messages {
            let e = encode(m);
            let img_path = match e.base {
                3 => Some(format!("THUMBNAIL_DIRPATH://th_{:x}", m.svr_id)),
                34 | 43 => Some(format!("{:x}", m.svr_id)),
                _ => None,
            };
            msg.execute(params![
                m.svr_id,
                e.android_type,
                if m.is_self { 2 } else { 3 },
                i64::from(m.is_self),
                m.timestamp * 1000,
                m.conversation,
                e.prefixed_content(m),
                img_path
            ])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Write the encrypted `EnMicroMsg.db`.
pub fn write_encrypted(path: &Path, h: &History, key7: &str, salt: [u8; 16]) -> anyhow::Result<()> {
    encrypted::create_encrypted(path, Cipher::Android, key7.as_bytes(), salt, |c| fill(c, h))
}

/// Write an already decrypted copy (plain SQLite, format "sqlite").
pub fn write_plain(path: &Path, h: &History) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let conn = Connection::open(path)?;
    fill(&conn, h)
}
