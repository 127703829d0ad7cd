//! A training stage that cannot fit the device refuses before it loads its base, naming the
//! params that would make it fit. A test binary of its own: it sets AVATAR_MEMORY_LIMIT_MB,
//! which every training stage in the process reads.

#[allow(dead_code)]
#[path = "runtime/common.rs"]
mod common;

use avatar::stages::common::jsonl::write_jsonl;

#[test]
fn a_run_bigger_than_the_device_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    write_jsonl(&path("train.jsonl"), &common::corpus(16)).unwrap();
    write_jsonl(&path("val.jsonl"), &common::corpus(4)).unwrap();
    let scratch = "vocab_size = 400\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 64\nmax_position_embeddings = 128";
    common::run_stage(
        &avatar::stages::scratch_base::ScratchBaseStage,
        scratch,
        &[("corpus", &path("train.jsonl"))],
        &path("base"),
        &path("work-base"),
    )
    .unwrap();
    // SAFETY: the only test in this binary; set before any stage runs.
    unsafe { std::env::set_var("AVATAR_MEMORY_LIMIT_MB", "1") };
    let (base, train, val) = (path("base/model"), path("train.jsonl"), path("val.jsonl"));
    let inputs: [(&str, &std::path::Path); 3] = [("base", &base), ("train", &train), ("val", &val)];
    let err = common::run_stage(
        &avatar::stages::sft::SftStage,
        "mode = \"lora\"\nmax_steps = 2\nbatch_size = 4\nmax_seq_len = 64",
        &inputs,
        &path("sft"),
        &path("work-sft"),
    )
    .unwrap_err();
    let text = format!("{err:#}");
    for part in ["stage `t`", "needs about", "0.0 GiB the cpu has free", "base_quant", "grad_checkpoint", "batch_size"]
    {
        assert!(text.contains(part), "missing `{part}`: {text}");
    }
    assert!(!path("sft/model").exists(), "nothing was trained or written");

    unsafe { std::env::set_var("AVATAR_MEMORY_LIMIT_MB", "100000") };
    common::run_stage(
        &avatar::stages::sft::SftStage,
        "mode = \"lora\"\nmax_steps = 2\nbatch_size = 4\nmax_seq_len = 64",
        &inputs,
        &path("sft2"),
        &path("work-sft2"),
    )
    .expect("fits in 100 GB");
}
