//! A training stage that cannot fit the device refuses before it loads its base, naming the
//! params that would make it fit. A test binary of its own: it sets AVATAR_MEMORY_LIMIT_MB,
//! which every training stage in the process reads.

#[allow(dead_code)]
#[path = "runtime/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "runtime/fixture.rs"]
mod fixture;

const PARAMS: &str = "mode = \"lora\"\nmax_steps = 2\nbatch_size = 4\nmax_seq_len = 64";

#[test]
fn a_run_bigger_than_the_device_is_refused_before_training() {
    let f = fixture::Fixture::new();
    // SAFETY: the only test in this binary; set before any stage runs.
    unsafe { std::env::set_var("AVATAR_MEMORY_LIMIT_MB", "1") };
    let text = format!("{:#}", f.sft(PARAMS, "sft").unwrap_err());
    for part in ["stage `t`", "needs about", "0.0 GiB the cpu has free", "base_quant", "grad_checkpoint", "batch_size"]
    {
        assert!(text.contains(part), "missing `{part}`: {text}");
    }
    assert!(!f.path("sft/model").exists(), "nothing was trained or written");

    unsafe { std::env::set_var("AVATAR_MEMORY_LIMIT_MB", "100000") };
    f.sft(PARAMS, "sft2").expect("fits in 100 GB");
}
