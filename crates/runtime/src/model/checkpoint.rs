//! Gradient checkpointing. A training forward runs each layer on a detached copy of its input
//! and drops the layer's graph, keeping only the input (and the dropout generator's state); the
//! last layer's output becomes a leaf. [`Model::backward`] first backpropagates the loss to that
//! leaf (head, final norm, everything after the layers), then walks the layers in reverse:
//! recompute one with its graph, backpropagate `sum(output · upstream gradient)`, add the
//! adapters' gradients to the store, and hand the input's gradient to the layer below. Activation
//! memory is one layer's instead of all of them, for one more forward per step.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::{Model, Pass, Tables};

/// One checkpointed forward pass.
pub(super) struct Segment {
    tables: Tables,
    /// Each layer's input, detached.
    inputs: Vec<Tensor>,
    /// The dropout generator before each layer, so the recomputation draws the same masks.
    rngs: Vec<Option<ChaCha8Rng>>,
    /// The embedding output with its graph: in full training the embedding takes a gradient.
    embedded: Tensor,
    /// The last layer's output, a leaf the loss's own backward reaches.
    leaf: Var,
}

impl Model {
    /// The layers of a training forward under checkpointing: the last layer's output, as a
    /// leaf recorded on the model's tape.
    pub(super) fn layers_checkpointed(
        &self,
        embedded: Tensor,
        tables: Tables,
        pass: &mut Pass,
    ) -> anyhow::Result<Tensor> {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut rngs = Vec::with_capacity(self.layers.len());
        let mut x = embedded.detach();
        for layer in &self.layers {
            rngs.push(pass.rng.as_deref().cloned());
            let out = self.layer_train(layer, &x, &tables, pass)?;
            inputs.push(x);
            x = out.detach();
        }
        let leaf = Var::from_tensor(&x)?;
        let out = leaf.as_tensor().clone();
        let segment = Segment { tables, inputs, rngs, embedded, leaf };
        self.tape.lock().map_err(|_| anyhow::anyhow!("checkpoint tape poisoned"))?.push(segment);
        Ok(out)
    }

    /// The gradients of `loss` for every trainable tensor. Use it instead of
    /// `loss.backward()` in training code: with checkpointing on, the layers' share of the
    /// gradient is computed here (a bare `loss.backward()` would silently miss it).
    pub fn backward(&self, loss: &Tensor) -> anyhow::Result<GradStore> {
        let mut grads = loss.backward()?;
        let segments = std::mem::take(&mut *self.tape.lock().map_err(|_| anyhow::anyhow!("checkpoint tape poisoned"))?);
        for seg in segments.into_iter().rev() {
            // A forward the loss does not depend on (or one left over from a failed step).
            let Some(mut g) = grads.remove(seg.leaf.as_tensor()) else { continue };
            for (i, layer) in self.layers.iter().enumerate().rev() {
                let x = Var::from_tensor(&seg.inputs[i])?;
                let mut rng = seg.rngs[i].clone();
                let mut pass = Pass { grad: true, rng: rng.as_mut() };
                let out = self.layer_train(layer, x.as_tensor(), &seg.tables, &mut pass)?;
                let layer_grads = (out * &g)?.sum_all()?.backward()?;
                self.merge(&mut grads, &layer_grads)?;
                g = match layer_grads.get(x.as_tensor()) {
                    Some(g) => g.detach(),
                    None => anyhow::bail!("checkpointed layer {i}: no gradient reached its input"),
                };
            }
            if self.embed.is_variable() {
                let embed_grads = (&seg.embedded * &g)?.sum_all()?.backward()?;
                self.merge(&mut grads, &embed_grads)?;
            }
        }
        Ok(grads)
    }

    /// Add the trainable tensors' gradients in `part` to `grads`.
    fn merge(&self, grads: &mut GradStore, part: &GradStore) -> anyhow::Result<()> {
        for (_, var) in &self.trainable {
            if let Some(d) = part.get(var.as_tensor()) {
                let sum = match grads.remove(var.as_tensor()) {
                    Some(s) => (s + d.detach())?,
                    None => d.detach(),
                };
                grads.insert(var.as_tensor(), sum);
            }
        }
        Ok(())
    }
}
