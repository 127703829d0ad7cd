//! Stage implementations. Each module implements `engine::Stage` for one kind; `registry()` is
//! the only place the engine learns their names.

pub mod adapter_import;
pub mod command;
pub mod common;
pub mod decrypt_read;
pub mod dpo;
pub mod eval;
pub mod export;
pub mod normalise;
pub mod ppo;
pub mod quantize;
pub mod reward_label;
pub mod reward_train;
pub mod scratch_base;
pub mod serve;
pub mod sft;
pub mod split;
pub mod window;

use avatar_engine::Registry;

/// Every product stage kind.
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    registry.add(decrypt_read::DecryptReadStage);
    registry.add(normalise::NormaliseStage);
    registry.add(window::WindowStage);
    registry.add(eval::Eval);
    registry.add(split::SplitStage);
    registry.add(export::ExportStage);
    registry.add(quantize::QuantizeStage);
    registry.add(scratch_base::ScratchBaseStage);
    registry.add(sft::SftStage);
    registry.add(reward_label::RewardLabelStage);
    registry.add(serve::ServeStage);
    registry.add(reward_train::RewardTrainStage);
    registry.add(ppo::PpoStage);
    registry.add(dpo::DpoStage);
    registry.add(command::CommandStage);
    registry.add(adapter_import::AdapterImportStage);
    registry.set_cuda_probe(avatar_runtime::device::cuda_available);
    registry
}
