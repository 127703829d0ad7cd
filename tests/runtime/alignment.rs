//! reward-train, ppo and dpo: the gradient surrogates against plain autograd, every trainable
//! tensor getting a gradient, and the stages end to end on a tiny model with a clear preference.

use std::collections::BTreeSet;
use std::path::Path;

use avatar::runtime::batch::build_batch;
use avatar::runtime::chat::ChatTemplate;
use avatar::runtime::lora::LoraConfig;
use avatar::runtime::model::{Model, Pass, TrainMode};
use avatar::runtime::reward::{last_token_batch, score_batch};
use avatar::runtime::scalar_head::ScalarHead;
use avatar::runtime::token_logprobs::{linear_surrogate, logp_surrogate, policy_forward, policy_forward_at};
use avatar::stages::common::jsonl::write_jsonl;
use avatar::stages::common::ranked::Ranked;
use candle_core::{Device, Tensor};

use super::common::run_stage;
use super::common::{corpus, max_abs_diff, seeded_randn, tiny_config, tiny_weights, tokenizer_for_tests};
use super::fixture::Fixture;

fn lora(r: usize) -> LoraConfig {
    LoraConfig { r, alpha: 2.0 * r as f64, dropout: 0.0, target_modules: vec!["all-linear".into()], rslora: false }
}

fn batch_for_tests() -> avatar::runtime::model::Batch {
    let tk = tokenizer_for_tests();
    let tpl = ChatTemplate::chatml();
    let enc: Vec<_> = corpus(4).iter().map(|s| tpl.encode_sample(&tk, s, 64).unwrap().expect("fits")).collect();
    build_batch(&enc.iter().map(|e| vec![e]).collect::<Vec<_>>(), 0)
}

/// Give LoRA B matrices values (they start at zero, which hides A's gradient).
fn perturb_adapters(model: &Model) {
    for (name, var) in model.trainable() {
        let seed = super::common::name_seed(name);
        var.set(&seeded_randn(var.dims(), 0.1, seed)).unwrap();
    }
}

#[test]
fn logp_surrogate_gives_the_cross_entropy_gradient() {
    // With c_t = -1/n for every token, sum_t c_t grad(log p_t) is the gradient of the mean NLL,
    // which Model::loss computes through its own path: both must agree.
    let dev = Device::Cpu;
    for (mode, tie) in [(TrainMode::Lora(lora(4)), true), (TrainMode::Full, false)] {
        let cfg = tiny_config("qwen2", 320, tie);
        let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 5), &mode, 1, &dev).unwrap();
        if matches!(mode, TrainMode::Lora(_)) {
            perturb_adapters(&model);
        }
        let batch = batch_for_tests();
        let expected = model.loss(&batch, &mut Pass { grad: true, rng: None }).unwrap().backward().unwrap();
        let fwd = policy_forward(&model, &batch, &mut Pass { grad: true, rng: None }).unwrap();
        let n = batch.targets.len();
        let mean_nll = -fwd.stats.logp.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
        let plain = model.loss(&batch, &mut Pass::inference()).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((mean_nll - plain).abs() < 1e-4, "log-probs agree with the loss: {mean_nll} vs {plain}");
        let got = logp_surrogate(&model, &fwd, &vec![-1.0 / n as f32; n]).unwrap();
        assert_eq!(got.to_scalar::<f32>().unwrap(), 0.0, "the surrogate's value is zero");
        let got = got.backward().unwrap();
        for (name, var) in model.trainable() {
            let (a, b) = (
                expected.get(var.as_tensor()).unwrap(),
                got.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")),
            );
            let scale = a
                .abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-6);
            assert!(max_abs_diff(a, b) / scale < 1e-3, "{name}: surrogate gradient differs from autograd");
        }
    }
}

#[test]
fn the_tempered_surrogate_is_the_gradient_of_the_tempered_log_probs() {
    // ppo at `temperature = T` optimises log softmax(z / T): the surrogate's gradient must match
    // central finite differences of the mean tempered log-prob, and not the untempered one's.
    let dev = Device::Cpu;
    let cfg = tiny_config("qwen2", 320, true);
    let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 9), &TrainMode::Lora(lora(2)), 1, &dev).unwrap();
    perturb_adapters(&model);
    let batch = batch_for_tests();
    let t = 0.5;
    let mean_logp = |temperature: f64| -> f64 {
        let f = policy_forward_at(&model, &batch, &mut Pass::inference(), temperature).unwrap();
        f.stats.logp.iter().map(|x| *x as f64).sum::<f64>() / f.stats.logp.len() as f64
    };
    let fwd = policy_forward_at(&model, &batch, &mut Pass { grad: true, rng: None }, t).unwrap();
    let n = batch.targets.len();
    let grads = logp_surrogate(&model, &fwd, &vec![1.0 / n as f32; n]).unwrap().backward().unwrap();
    let (name, var) = model.trainable().iter().find(|(name, _)| name.contains("lora_B")).expect("a LoRA B");
    let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // The three largest entries: their differences stand well above f32 rounding.
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let original = var.as_tensor().copy().unwrap();
    let eps = 1e-2f32;
    for &i in &order[..3] {
        let shifted = |d: f32| {
            let mut v: Vec<f32> = original.flatten_all().unwrap().to_vec1().unwrap();
            v[i] += d;
            var.set(&Tensor::from_vec(v, original.dims(), &dev).unwrap()).unwrap();
        };
        shifted(eps);
        let (up, up1) = (mean_logp(t), mean_logp(1.0));
        shifted(-eps);
        let (down, down1) = (mean_logp(t), mean_logp(1.0));
        var.set(&original).unwrap();
        let (numeric, untempered) = ((up - down) / (2.0 * eps as f64), (up1 - down1) / (2.0 * eps as f64));
        let got = g[i] as f64;
        assert!((got - numeric).abs() <= 0.03 * numeric.abs(), "{name}[{i}]: surrogate {got} vs numeric {numeric}");
        assert!((got - untempered).abs() > 0.1 * numeric.abs(), "{name}[{i}]: T must matter ({untempered})");
    }
}

#[test]
fn reward_head_and_adapters_all_get_gradients() {
    let dev = Device::Cpu;
    let cfg = tiny_config("llama", 320, false);
    let model = Model::from_tensors(cfg.clone(), tiny_weights(&cfg, 6), &TrainMode::Lora(lora(2)), 1, &dev).unwrap();
    perturb_adapters(&model);
    let head = ScalarHead::new(cfg.hidden_size, 3, &dev).unwrap();
    let tk = tokenizer_for_tests();
    let tpl = ChatTemplate::chatml();
    let enc: Vec<_> = corpus(3).iter().map(|s| tpl.encode_sample(&tk, s, 64).unwrap().unwrap()).collect();
    let batch = last_token_batch(&enc.iter().collect::<Vec<_>>(), 0);
    let r = score_batch(&model, &head, &batch, &mut Pass { grad: true, rng: None }).unwrap();
    assert_eq!(r.dims(), &[3]);
    let grads = linear_surrogate(&r, &[1.0, -0.5, 0.25]).unwrap().backward().unwrap();
    let mut missing = BTreeSet::new();
    for (name, var) in model.trainable().iter().chain(head.vars().iter()) {
        match grads.get(var.as_tensor()) {
            Some(g) if g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0 => {}
            _ => {
                missing.insert(name.clone());
            }
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    // The score reads the last real token: padding a shorter row must not change it.
    let alone = last_token_batch(&[&enc[0]], 0);
    let r0 = score_batch(&model, &head, &alone, &mut Pass::inference()).unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((r0 - r.to_vec1::<f32>().unwrap()[0]).abs() < 1e-4);
    // Round trip through HF names.
    let dir = tempfile::tempdir().unwrap();
    head.save(&dir.path().join("h.safetensors")).unwrap();
    let back = ScalarHead::load(&dir.path().join("h.safetensors"), cfg.hidden_size, &dev).unwrap();
    let h = Tensor::ones((1, cfg.hidden_size), candle_core::DType::F32, &dev).unwrap();
    assert!(max_abs_diff(&head.forward(&h).unwrap(), &back.forward(&h).unwrap()) < 1e-6);
}

/// Ranked data with one clear rule: the person's own reply beats a bland one beats an insult.
pub fn write_ranked(path: &Path, n: usize) {
    let records: Vec<Ranked> = corpus(n)
        .iter()
        .map(|s| Ranked::new(s, vec!["滚蛋<s>傻逼".into(), s.reply.clone(), "嗯".into()], vec![1.0, 3.0, 2.0], "rules"))
        .collect();
    write_jsonl(path, &records).unwrap();
}

fn metric(m: &avatar::engine::Metrics, k: &str) -> f64 {
    m.get(k).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("metric {k} missing: {m:?}"))
}

#[test]
fn reward_train_then_ppo_and_dpo_on_a_tiny_model() {
    let fx = Fixture::new();
    fx.sft("mode = \"full\"\nlr = 3e-3\nmax_steps = 30\nbatch_size = 8\nmax_seq_len = 64\nwarmup_steps = 2\neval_every = 0\ncheckpoint_every = 0", "sft")
        .unwrap();
    let sft = fx.path("sft/model");
    let ranked = fx.path("ranked.jsonl");
    write_ranked(&ranked, 48);

    let reward = run_stage(
        &avatar::stages::reward_train::RewardTrainStage,
        "lr = 3e-3\nepochs = 6\nbatch_size = 8\nmax_seq_len = 64\nval_fraction = 0.25",
        &[("base", &sft), ("ranked", &ranked)],
        &fx.path("reward"),
        &fx.path("work-reward"),
    )
    .unwrap();
    assert!(metric(&reward, "val_pair_accuracy") > 0.7, "held-out pair accuracy: {reward:?}");
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "model/reward_head.safetensors",
        "model/reward.json",
        "adapter/adapter_config.json",
        "curves/loss.svg",
    ] {
        assert!(fx.path("reward").join(f).is_file(), "reward-train wrote {f}");
    }

    let ppo = run_stage(
        &avatar::stages::ppo::PpoStage,
        "lr = 2e-3\ncritic_lr = 5e-3\niterations = 4\nrollout_size = 8\nminibatch_size = 4\nmax_new_tokens = 12\nmax_prompt_tokens = 48\nkl_target = 1.0\nentropy_coef = 0.01",
        &[("policy", &sft), ("reward", &fx.path("reward/model")), ("prompts", &fx.path("train.jsonl"))],
        &fx.path("ppo"),
        &fx.path("work-ppo"),
    )
    .unwrap();
    for k in
        ["reward_first", "reward_last3", "kl_last", "kl_max", "entropy_last", "clip_fraction_last", "value_loss_last"]
    {
        assert!(metric(&ppo, k).is_finite(), "{k} is finite: {ppo:?}");
    }
    assert!(metric(&ppo, "kl_max") < 50.0, "KL to the SFT model stays bounded: {ppo:?}");
    // The adaptive controller moved β from its start (kl_coef's default, 0.05).
    let coef = metric(&ppo, "kl_coef_last");
    assert!(coef > 0.0 && coef != 0.05, "kl_coef_last {coef}");
    for f in [
        "model/model.safetensors",
        "adapter/adapter_model.safetensors",
        "curves/reward.svg",
        "curves/kl.json",
        "curves/kl_coef.json",
        "curves/ppo.json",
    ] {
        assert!(fx.path("ppo").join(f).is_file(), "ppo wrote {f}");
    }
    assert_ne!(
        std::fs::read(fx.path("ppo/model/model.safetensors")).unwrap(),
        std::fs::read(sft.join("model.safetensors")).unwrap(),
        "the policy moved"
    );

    let dpo = run_stage(
        &avatar::stages::dpo::DpoStage,
        "lr = 3e-3\nepochs = 4\nbatch_size = 8\nmax_seq_len = 64\nbeta = 0.5",
        &[("policy", &sft), ("ranked", &ranked)],
        &fx.path("dpo"),
        &fx.path("work-dpo"),
    )
    .unwrap();
    assert!(metric(&dpo, "train_accuracy") > 0.8, "DPO learns the preference: {dpo:?}");
    assert!(metric(&dpo, "train_margin") > 0.0, "{dpo:?}");
    assert!(fx.path("dpo/model/model.safetensors").is_file() && fx.path("dpo/adapter/adapter_config.json").is_file());

    // The sft term (sft_coef) holds the chosen replies' likelihood: same run, same seed, with it
    // the chosen NLL ends lower than without it, and the implicit reward still prefers the chosen.
    let anchored = run_stage(
        &avatar::stages::dpo::DpoStage,
        "lr = 3e-3\nepochs = 4\nbatch_size = 8\nmax_seq_len = 64\nbeta = 0.5\nsft_coef = 2.0",
        &[("policy", &sft), ("ranked", &ranked)],
        &fx.path("dpo-anchored"),
        &fx.path("work-dpo-anchored"),
    )
    .unwrap();
    assert_eq!(metric(&anchored, "reference_chosen_nll"), metric(&dpo, "reference_chosen_nll"));
    assert!(
        metric(&anchored, "train_chosen_nll") < metric(&dpo, "train_chosen_nll") - 0.05,
        "with sft_coef the chosen NLL is lower: {anchored:?} vs {dpo:?}"
    );
    // Plain DPO raises the chosen NLL above the reference's (the failure the term exists for).
    assert!(metric(&dpo, "train_chosen_nll") > metric(&dpo, "reference_chosen_nll"), "{dpo:?}");
    assert!(metric(&anchored, "train_margin") > 1.0, "the preference is still learned: {anchored:?}");
}

#[test]
fn unscored_ranked_data_asks_for_labels() {
    let fx = Fixture::new();
    let ranked = fx.path("ranked.jsonl");
    let records: Vec<Ranked> =
        corpus(4).iter().map(|s| Ranked::new(s, vec!["a".into(), "b".into()], vec![], "human")).collect();
    write_jsonl(&ranked, &records).unwrap();
    let err = run_stage(
        &avatar::stages::dpo::DpoStage,
        "",
        &[("policy", &fx.path("base/model")), ("ranked", &ranked)],
        &fx.path("dpo"),
        &fx.path("work-dpo"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("avatar label"), "{err:#}");
}
