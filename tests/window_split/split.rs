//! `split`: deterministic, ratio-respecting, and without leakage between splits.

use std::collections::{HashMap, HashSet};

use avatar::stages::common::sample::Sample;
use avatar::stages::split::{SplitParams, Splits, split_samples};
use avatar::stages::window::{WindowParams, build_samples};

use super::corpus::corpus;

fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let params = WindowParams { include_groups: true, ..Default::default() };
    build_samples(&corpus(n, 400, seed), &params).unwrap().samples
}

fn ids(s: &[Sample]) -> Vec<&str> {
    s.iter().map(|x| x.id.as_str()).collect()
}

#[test]
fn no_message_is_seen_by_two_splits() {
    let params = WindowParams { include_groups: true, ..Default::default() };
    let out = build_samples(&corpus(40_000, 400, 11), &params).unwrap();
    assert!(out.stats.sessions_linked_by_quotes > 20, "the corpus must have quotes across sessions");
    let split = SplitParams { train: 0.6, val: 0.2, test: 0.2, ..Default::default() };
    let splits = split_samples(out.samples, &split, 42).unwrap();
    assert!(splits.val.len() > 100 && splits.test.len() > 100);

    // Every synthetic message text is unique ("c<conv>m<i> …"); placeholders are not, skip them.
    let mut seen_in: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (name, part) in [("train", &splits.train), ("val", &splits.val), ("test", &splits.test)] {
        for s in part.iter() {
            let pieces = s
                .context
                .iter()
                .flat_map(|t| t.text.split('\n').flat_map(|x| x.split("<s>")))
                .chain(s.reply.split("<s>"));
            for piece in pieces.filter(|p| p.starts_with('c')) {
                seen_in.entry(piece).or_default().insert(name);
            }
        }
    }
    assert!(seen_in.len() > 10_000);
    let leaked: Vec<_> = seen_in.iter().filter(|(_, parts)| parts.len() > 1).take(5).collect();
    assert!(leaked.is_empty(), "messages in more than one split: {leaked:?}");
}

#[test]
fn the_same_seed_gives_the_same_split_and_another_seed_another() {
    let all = samples(20_000, 3);
    let p = SplitParams::default();
    let a = split_samples(all.clone(), &p, 1).unwrap();
    let b = split_samples(all.clone(), &p, 1).unwrap();
    let c = split_samples(all.clone(), &p, 2).unwrap();
    assert_eq!(ids(&a.train), ids(&b.train));
    assert_eq!(ids(&a.test), ids(&b.test));
    assert_ne!(ids(&a.val), ids(&c.val));
    assert_eq!(a.train.len() + a.val.len() + a.test.len(), all.len());
    // Adding more chats does not move existing sessions.
    let fewer = split_samples(all[..all.len() / 2].to_vec(), &p, 1).unwrap();
    let train: HashSet<&str> = ids(&a.train).into_iter().collect();
    assert!(ids(&fewer.train).iter().all(|id| train.contains(id)));
}

#[test]
fn ratios_hold_over_sessions() {
    let all = samples(60_000, 5);
    let p = SplitParams { train: 0.7, val: 0.2, test: 0.1, ..Default::default() };
    let splits = split_samples(all, &p, 9).unwrap();
    let sessions = |s: &[Sample]| {
        s.iter().map(|x| (x.conversation.clone(), x.session.clone())).collect::<HashSet<_>>().len() as f64
    };
    let (tr, va, te) = (sessions(&splits.train), sessions(&splits.val), sessions(&splits.test));
    let total = tr + va + te;
    assert!(total > 1500.0, "{total} sessions");
    for (got, want) in [(tr / total, 0.7), (va / total, 0.2), (te / total, 0.1)] {
        assert!((got - want).abs() < 0.04, "share {got:.3}, want {want}");
    }
    // Samples of one session never straddle splits.
    let owner: HashMap<(&str, &str), usize> = [&splits.train, &splits.val, &splits.test]
        .iter()
        .enumerate()
        .flat_map(|(i, part)| part.iter().map(move |s| ((s.conversation.as_str(), s.session.as_str()), i)))
        .fold(HashMap::new(), |mut m, (k, i)| {
            let prev = *m.entry(k).or_insert(i);
            assert_eq!(prev, i, "session {k:?} in two splits");
            m
        });
    assert!(!owner.is_empty());
}

#[test]
fn bad_ratios_are_rejected_with_the_param_named() {
    let err = split_samples(Vec::new(), &SplitParams { train: 0.9, val: 0.2, test: 0.0, ..Default::default() }, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sum to 1"), "{err}");
    let err = split_samples(Vec::new(), &SplitParams { train: 1.5, val: -0.5, test: 0.0, ..Default::default() }, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`train`"), "{err}");
    let empty: Splits = split_samples(Vec::new(), &SplitParams::default(), 0).unwrap();
    assert!(empty.train.is_empty());
}
