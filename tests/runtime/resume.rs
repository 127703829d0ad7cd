//! Every stage that checkpoints, killed after a checkpoint (the test seam in
//! common/checkpoint.rs) and rerun on the same work dir: it resumes from the checkpoint and
//! writes the very bytes an uninterrupted run writes (weights, curves, every non-timing metric).

use std::path::Path;

use avatar::engine::{Metrics, Stage};
use avatar::stages::common::checkpoint::{Interrupt, interrupt};

use super::alignment::write_ranked;
use super::common::run_stage;
use super::fixture::Fixture;

/// Every file under `dir`, relative path → bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Metrics that are not timings or about the resume itself.
fn comparable(m: &Metrics) -> Metrics {
    m.iter()
        .filter(|(k, _)| !k.contains("seconds") && !k.contains("per_second") && *k != "resumed_from_step")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn kill_and_resume(fx: &Fixture, name: &str, stage: &dyn Stage, params: &str, inputs: &[(&str, &Path)], at: Interrupt) {
    let clean = run_stage(stage, params, inputs, &fx.path(&format!("{name}-clean")), &fx.path(&format!("{name}-wa")))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let work = fx.path(&format!("{name}-wb"));
    std::fs::create_dir_all(&work).unwrap();
    interrupt(&work, at);
    let killed = run_stage(stage, params, inputs, &fx.path(&format!("{name}-killed")), &work).unwrap_err();
    assert!(format!("{killed:#}").contains("interrupted"), "{name}: {killed:#}");
    assert!(work.join("checkpoint/state.json").is_file(), "{name}: the checkpoint is there");
    let resumed = run_stage(stage, params, inputs, &fx.path(&format!("{name}-resumed")), &work)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(resumed["resumed_from_step"], at.checkpoint_at, "{name} resumed from its checkpoint: {resumed:?}");
    assert!(!clean.contains_key("resumed_from_step"), "{name}: {clean:?}");
    let (a, b) = (files(&fx.path(&format!("{name}-clean"))), files(&fx.path(&format!("{name}-resumed"))));
    assert_eq!(a.iter().map(|(p, _)| p).collect::<Vec<_>>(), b.iter().map(|(p, _)| p).collect::<Vec<_>>(), "{name}");
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name}: {path} differs after the resume");
    }
    assert_eq!(comparable(&clean), comparable(&resumed), "{name}: metrics differ after the resume");
    assert!(!work.join("checkpoint").exists(), "{name}: the checkpoint is removed once the outputs are written");
}

#[test]
fn reward_train_ppo_dpo_and_reward_label_resume_to_the_same_bytes() {
    let fx = Fixture::new();
    fx.sft("mode = \"full\"\nlr = 3e-3\nmax_steps = 8\nbatch_size = 8\nmax_seq_len = 64\nwarmup_steps = 2\neval_every = 0\ncheckpoint_every = 0", "sft")
        .unwrap();
    let sft = fx.path("sft/model");
    let ranked = fx.path("ranked.jsonl");
    write_ranked(&ranked, 24);

    // 2 epochs of 3 steps: the checkpoint is mid-epoch 2, the kill one step later (redone).
    kill_and_resume(
        &fx,
        "reward",
        &avatar::stages::reward_train::RewardTrainStage,
        "lr = 3e-3\nepochs = 2\nbatch_size = 8\nmax_seq_len = 64\nval_fraction = 0.25\n[lora]\nr = 4\ndropout = 0.1",
        &[("base", &sft), ("ranked", &ranked)],
        Interrupt { checkpoint_at: 4, fail_after: 5 },
    );
    kill_and_resume(
        &fx,
        "dpo",
        &avatar::stages::dpo::DpoStage,
        "lr = 3e-3\nepochs = 2\nbatch_size = 8\nmax_seq_len = 64\nbeta = 0.5",
        &[("policy", &sft), ("ranked", &ranked)],
        // A checkpoint at an epoch's last step, before that epoch's held-out evaluation.
        Interrupt { checkpoint_at: 3, fail_after: 3 },
    );
    kill_and_resume(
        &fx,
        "ppo",
        &avatar::stages::ppo::PpoStage,
        "lr = 2e-3\ncritic_lr = 5e-3\niterations = 4\nrollout_size = 6\nminibatch_size = 4\nmax_new_tokens = 8\nmax_prompt_tokens = 48",
        &[("policy", &sft), ("reward", &fx.path("reward-clean/model")), ("prompts", &fx.path("train.jsonl"))],
        Interrupt { checkpoint_at: 2, fail_after: 3 },
    );
    kill_and_resume(
        &fx,
        "label",
        &avatar::stages::reward_label::RewardLabelStage,
        "n = 2\nprompts = 6\ngeneration = { max_tokens = 8 }",
        &[("model", &sft), ("prompts", &fx.path("val.jsonl")), ("reference", &fx.path("train.jsonl"))],
        Interrupt { checkpoint_at: 3, fail_after: 4 },
    );
}
