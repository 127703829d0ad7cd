//! Seed 002's export: EnMicroMsg's `message`, `rcontact` and `userinfo` tables saved as CSV
//! (DB Browser style: a header row with the column names).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::super::DecryptReadParams;
use super::super::android::{AndroidRow, convert_row};
use super::super::locate::{self, file_name};
use super::super::raw::RawContact;
use super::{Columns, ExportRead, csv_reader, field, int_field};

fn find(input: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    Ok(locate::files_under(input, 3)?.into_iter().find(|p| file_name(p) == name))
}

pub fn read(input: &Path, p: &DecryptReadParams) -> anyhow::Result<ExportRead> {
    let Some(message_csv) = find(input, "message.csv")? else {
        bail!("{}: no message.csv (seed-csv expects message.csv, rcontact.csv and userinfo.csv)", input.display());
    };
    let mut contacts = Vec::new();
    if let Some(path) = find(input, "rcontact.csv")? {
        let mut rdr = csv_reader(&path)?;
        let cols = Columns::new(&path, &mut rdr)?;
        let (u, n, r) = (cols.require(&path, "username")?, cols.index("nickname"), cols.index("conRemark"));
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
            let id = field(&rec, Some(u)).to_string();
            contacts.push(RawContact {
                is_group: id.ends_with("@chatroom"),
                id,
                nickname: field(&rec, n).to_string(),
                remark: field(&rec, r).to_string(),
            });
        }
    }
    let (mut db_self, mut db_name) = (None, None);
    if let Some(path) = find(input, "userinfo.csv")? {
        let mut rdr = csv_reader(&path)?;
        let cols = Columns::new(&path, &mut rdr)?;
        let (i, v) = (cols.require(&path, "id")?, cols.require(&path, "value")?);
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
            match field(&rec, Some(i)).trim() {
                "2" => db_self = Some(field(&rec, Some(v)).to_string()),
                "4" => db_name = Some(field(&rec, Some(v)).to_string()),
                _ => {}
            }
        }
    }
    let self_id = p.self_id.clone().or(db_self).unwrap_or_else(|| "self".to_string());
    let self_name = db_name.unwrap_or_else(|| self_id.clone());
    let path = message_csv;
    let mut rdr = csv_reader(&path)?;
    let cols = Columns::new(&path, &mut rdr)?;
    let c_id = cols.index("msgId");
    let c_svr = cols.index("msgSvrId");
    let c_type = cols.require(&path, "type")?;
    let c_send = cols.require(&path, "isSend")?;
    let c_time = cols.require(&path, "createTime")?;
    let c_talker = cols.require(&path, "talker")?;
    let c_content = cols.require(&path, "content")?;
    let mut messages = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: malformed CSV near record {}", path.display(), n + 1))?;
        let svr = field(&rec, c_svr).trim();
        let row = AndroidRow {
            msg_id: c_id.map(|i| int_field(&path, &rec, i, "msgId")).transpose()?.unwrap_or(n as i64 + 1),
            msg_svr_id: if svr.is_empty() {
                None
            } else {
                Some(svr.parse().with_context(|| {
                    format!("{}:{}: column `msgSvrId` is not an integer", path.display(), super::line_of(&rec))
                })?)
            },
            msg_type: int_field(&path, &rec, c_type, "type")?,
            is_send: int_field(&path, &rec, c_send, "isSend")?,
            create_time: int_field(&path, &rec, c_time, "createTime")?,
            talker: field(&rec, Some(c_talker)),
            content: field(&rec, Some(c_content)).as_bytes().into(),
        };
        messages.push(convert_row(&row, &self_id).to_message());
    }
    Ok((self_id, self_name, contacts, messages))
}
