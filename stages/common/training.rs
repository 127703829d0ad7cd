//! What the training stages (sft, reward-train, dpo, ppo) share: one [`Training`] params struct
//! and the setup their `run` starts with (params checked, seed, device, optimiser, schedule).
//!
//! The manifest keeps the shared keys flat beside a stage's own (`lr = 1e-3` right under
//! `[stages.sft]`), so every manifest written before this struct existed still reads the same
//! and its stage keys are unchanged. A stage's params are a [`WithTraining`] of its own struct:
//! the shared keys it uses go into [`Training`] (starting from the stage's defaults), every
//! other key goes to the stage's struct. serde's `flatten` would fill the shared struct from its
//! generic defaults instead of the stage's and loses the failing field's path in errors.

use std::fmt;
use std::marker::PhantomData;

use anyhow::bail;
use candle_core::{Device, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use avatar_engine::StageContext;
use avatar_runtime::device::select_device;
use avatar_runtime::held::{BaseQuant, DtypeChoice, HoldSpec};
use avatar_runtime::lora::LoraConfig;
use avatar_runtime::optim::{AdamW, AdamWConfig, lr_at};

/// The params every training stage shares. A stage reads only the ones it names in
/// [`OwnParams::SHARED`]; the rest keep its defaults and stay out of its key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Training {
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` at the end of the cosine.
    pub min_lr_ratio: f64,
    /// Optimiser steps of linear warmup.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// Max global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
    /// Rows per micro-batch (sft) or preference pairs per optimiser step (reward-train, dpo).
    pub batch_size: usize,
    /// Tokens per sample; longer samples lose their oldest context.
    pub max_seq_len: usize,
    pub epochs: usize,
    /// Seed for shuffling, LoRA init and dropout; the pipeline seed when unset.
    pub seed: Option<u64>,
    /// How the frozen base is held ("f32", "bf16", "f16", "auto"); `[pipeline] dtype` when
    /// unset. In the key only when set, so manifests without it keep their keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DtypeChoice>,
    /// QLoRA: the frozen linear layers quantized, "q8_0" or "q4_0" (GGML blocks of 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_quant: Option<BaseQuant>,
    /// Recompute each layer in backward instead of keeping its activations (long contexts,
    /// big bases): one more forward per step. In the key only when on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grad_checkpoint: bool,
}

/// The manifest keys of [`Training`]'s fields.
pub const TRAINING_KEYS: &[&str] = &[
    "lora",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "batch_size",
    "max_seq_len",
    "epochs",
    "seed",
    "dtype",
    "base_quant",
    "grad_checkpoint",
];

impl Default for Training {
    /// sft's defaults; the other stages change a few.
    fn default() -> Self {
        Training {
            lora: LoraConfig::default(),
            lr: 2e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            batch_size: 4,
            max_seq_len: 256,
            epochs: 1,
            seed: None,
            dtype: None,
            base_quant: None,
            grad_checkpoint: false,
        }
    }
}

impl Training {
    /// Checks of the shared params; `lora` only when the stage trains adapters.
    pub fn validate(&self, lora: bool) -> anyhow::Result<()> {
        if lora {
            self.lora.validate()?;
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("lr must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("min_lr_ratio must be in [0, 1]");
        }
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            bail!("weight_decay and grad_clip must not be negative");
        }
        if self.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if self.max_seq_len < 8 {
            bail!("max_seq_len must be at least 8");
        }
        if self.base_quant.is_some() && !lora {
            bail!("base_quant holds a frozen base quantized: it needs LoRA training (mode = \"lora\")");
        }
        Ok(())
    }

    /// AdamW over `vars` with this run's weight decay.
    pub fn optimiser(&self, vars: Vec<(String, Var)>) -> anyhow::Result<AdamW> {
        AdamW::new(vars, AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() })
    }

    /// Learning rate of optimiser step `step` of `total`: linear warmup, then cosine to
    /// `min_lr_ratio · lr`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        lr_at(step, total, self.warmup_steps, self.lr, self.min_lr_ratio)
    }

    /// Tokens per sample for a model that attends to at most `model_max` positions.
    pub fn max_len(&self, model_max: usize) -> usize {
        self.max_seq_len.min(model_max)
    }

    /// Read the value of shared key `key` from `map` (its path stays in serde's error).
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "lora" => self.lora = map.next_value()?,
            "lr" => self.lr = map.next_value()?,
            "min_lr_ratio" => self.min_lr_ratio = map.next_value()?,
            "warmup_steps" => self.warmup_steps = map.next_value()?,
            "weight_decay" => self.weight_decay = map.next_value()?,
            "grad_clip" => self.grad_clip = map.next_value()?,
            "batch_size" => self.batch_size = map.next_value()?,
            "max_seq_len" => self.max_seq_len = map.next_value()?,
            "epochs" => self.epochs = map.next_value()?,
            "seed" => self.seed = map.next_value()?,
            "dtype" => self.dtype = map.next_value()?,
            "base_quant" => self.base_quant = map.next_value()?,
            "grad_checkpoint" => self.grad_checkpoint = map.next_value()?,
            other => return Err(de::Error::custom(format_args!("`{other}` is not a shared training param"))),
        }
        Ok(())
    }
}

/// A training stage's own params struct (`#[serde(deny_unknown_fields, default)]` as every
/// params struct), beside the shared ones.
pub trait OwnParams: Serialize + DeserializeOwned {
    /// The [`TRAINING_KEYS`] this stage reads; any other is an unknown field to it.
    const SHARED: &'static [&'static str];
    /// The stage's defaults for the shared params.
    fn training_defaults() -> Training;
    /// Whether `lora` applies (sft's full mode trains every weight instead).
    fn uses_lora(&self) -> bool {
        true
    }
    /// Checks of the stage's own params, once the shared ones passed.
    fn validate(&self, training: &Training) -> anyhow::Result<()>;
}

/// A training stage's params: the shared ones and its own, one flat table in the manifest
/// and one flat object in the canonical params (so in the stage key).
#[derive(Debug, Clone, PartialEq)]
pub struct WithTraining<S> {
    pub training: Training,
    pub own: S,
}

impl<S: OwnParams + Default> Default for WithTraining<S> {
    fn default() -> Self {
        WithTraining { training: S::training_defaults(), own: S::default() }
    }
}

impl<S: OwnParams> WithTraining<S> {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.training.validate(self.own.uses_lora())?;
        self.own.validate(&self.training)
    }
}

impl<S: OwnParams> Serialize for WithTraining<S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::Error;
        let object = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err(Z::Error::custom("training params must serialise to an object")),
        };
        let mut all = object(serde_json::to_value(&self.own).map_err(Z::Error::custom)?)?;
        for (key, value) in object(serde_json::to_value(&self.training).map_err(Z::Error::custom)?)? {
            if S::SHARED.contains(&key.as_str()) {
                all.insert(key, value);
            }
        }
        all.serialize(serializer)
    }
}

impl<'de, S: OwnParams> Deserialize<'de> for WithTraining<S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table<S>(PhantomData<S>);
        impl<'de, S: OwnParams> Visitor<'de> for Table<S> {
            type Value = WithTraining<S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of stage params")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut training = S::training_defaults();
                let own_keys = field_names::<S>();
                let split = Split { map, training: &mut training, shared: S::SHARED, own: own_keys };
                let own = S::deserialize(split)?;
                Ok(WithTraining { training, own })
            }
        }
        deserializer.deserialize_map(Table(PhantomData))
    }
}

/// The stage's view of the params table: its own keys pass through, the shared ones are read
/// into `training` on the way. Reading from the caller's `MapAccess` itself (not a buffered
/// copy) keeps every error's field path.
struct Split<'t, A> {
    map: A,
    training: &'t mut Training,
    shared: &'static [&'static str],
    own: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Split<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if self.shared.contains(&key.as_str()) {
                self.training.read(&key, &mut self.map)?;
                continue;
            }
            if !self.own.contains(&key.as_str()) {
                let mut known: Vec<&str> = self.own.iter().chain(self.shared).copied().collect();
                known.sort_unstable();
                let listed = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                return Err(de::Error::custom(format_args!("unknown field `{key}`, expected one of {listed}")));
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Split<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The field names serde's derive gave `S`: it hands them to `deserialize_struct`, where this
/// probe keeps them (and stops).
fn field_names<S: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = S::deserialize(Probe(&mut fields));
    fields
}

/// What every training stage's `run` starts with: its params checked, the seed (the stage's
/// own or the pipeline's), the device, and how the frozen base is held there.
pub struct TrainingSetup {
    pub seed: u64,
    pub device: Device,
    pub hold: HoldSpec,
    /// Gradient checkpointing ([`Training::grad_checkpoint`]).
    pub checkpoint: bool,
}

impl TrainingSetup {
    pub fn from_ctx<S: OwnParams>(ctx: &StageContext, params: &WithTraining<S>) -> anyhow::Result<Self> {
        params.validate()?;
        let device = select_device(&ctx.globals.device)?;
        let dtype = match params.training.dtype {
            Some(d) => d.name(),
            None => ctx.globals.dtype.as_str(),
        };
        let hold = HoldSpec { dtype: HoldSpec::resolve_dtype(dtype, &device)?, quant: params.training.base_quant };
        Ok(TrainingSetup {
            seed: params.training.seed.unwrap_or(ctx.globals.seed),
            device,
            hold,
            checkpoint: params.training.grad_checkpoint,
        })
    }

    /// A generator for one use of the seed; each use has its own `salt`, so they stay
    /// independent of each other.
    pub fn rng(&self, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ salt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Own {
        beta: f64,
    }

    impl Default for Own {
        fn default() -> Self {
            Own { beta: 0.5 }
        }
    }

    impl OwnParams for Own {
        const SHARED: &'static [&'static str] = &["lora", "lr", "warmup_steps", "seed"];
        fn training_defaults() -> Training {
            Training { warmup_steps: 3, ..Training::default() }
        }
        fn validate(&self, _: &Training) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn parse(text: &str) -> Result<WithTraining<Own>, avatar_engine::stage::ParamError> {
        avatar_engine::stage::parse_params(&toml::from_str(text).unwrap())
    }

    #[test]
    fn shared_keys_fill_the_shared_struct_from_the_stages_defaults() {
        let p = parse("lr = 1e-3\nbeta = 0.25\n[lora]\nr = 4").unwrap();
        assert_eq!(p.own, Own { beta: 0.25 });
        assert_eq!(p.training.lr, 1e-3);
        assert_eq!(p.training.lora.r, 4);
        assert_eq!(p.training.warmup_steps, 3, "the stage's default, not the shared one");
        assert_eq!(p.training.seed, None);
    }

    #[test]
    fn canonical_form_is_flat_holds_only_the_stages_keys_and_reads_back() {
        let p = parse("seed = 9").unwrap();
        let v = serde_json::to_value(&p).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["beta", "lora", "lr", "seed", "warmup_steps"]);
        assert_eq!(serde_json::from_value::<WithTraining<Own>>(v).unwrap(), p);
    }

    #[test]
    fn errors_name_the_field_and_list_every_key() {
        let e = parse("lr = \"fast\"").unwrap_err();
        assert_eq!(e.path, "lr");
        let e = parse("[lora]\nr = -1").unwrap_err();
        assert_eq!(e.path, "lora.r");
        let e = parse("beta = true").unwrap_err();
        assert_eq!(e.path, "beta");
        // A shared key this stage does not read is as unknown as a typo.
        let e = parse("batch_size = 2").unwrap_err();
        assert!(e.message.starts_with("unknown field `batch_size`"), "{}", e.message);
        assert!(e.message.contains("`beta`, `lora`, `lr`, `seed`, `warmup_steps`"), "{}", e.message);
    }
}
