//! A sample as alternating (human, assistant) exchanges: the shape every export format needs.

use crate::common::sample::{BUBBLE_SEPARATOR, Role, Sample};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialogue {
    pub system: Option<String>,
    /// Oldest first; the last assistant message is the sample's reply.
    pub exchanges: Vec<(String, String)>,
}

/// Renders the context as alternating turns: other speakers' lines read `名字:内容` when the
/// sample names them (group chats) and consecutive lines of others join with `\n`; leading own
/// turns (no one to answer) are dropped. None when the context ends with an own turn (a
/// follow-up after a pause): those formats cannot hold two assistant turns in a row.
pub fn dialogue(sample: &Sample) -> Option<Dialogue> {
    let mut merged: Vec<(Role, String)> = Vec::with_capacity(sample.context.len() + 1);
    for turn in &sample.context {
        let text = match (&turn.speaker, turn.role) {
            (Some(name), Role::Other) => format!("{name}:{}", turn.text),
            _ => turn.text.clone(),
        };
        match merged.last_mut() {
            Some((role, acc)) if *role == turn.role => {
                acc.push_str(if turn.role == Role::Self_ { BUBBLE_SEPARATOR } else { "\n" });
                acc.push_str(&text);
            }
            None if turn.role == Role::Self_ => {}
            _ => merged.push((turn.role, text)),
        }
    }
    if merged.last().is_none_or(|(role, _)| *role != Role::Other) {
        return None;
    }
    merged.push((Role::Self_, sample.reply.clone()));
    let exchanges = merged.chunks_exact(2).map(|pair| (pair[0].1.clone(), pair[1].1.clone())).collect();
    Some(Dialogue { system: sample.system.clone(), exchanges })
}
