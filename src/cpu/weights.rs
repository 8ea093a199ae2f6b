//! A prefixed weight loader in candle's `VarBuilder` style: `vb.pp("layers.3").linear(...)`
//! fetches `<prefix>.layers.3.<name>.weight` from the checkpoint as f32, checking its shape,
//! so the checkpoint's tree stays visible in the model code.

use super::ops::Linear;
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;

#[derive(Clone)]
pub struct Vb<'a> {
    ckpt: &'a Checkpoint,
    prefix: String,
}

impl<'a> Vb<'a> {
    pub fn root(ckpt: &'a Checkpoint) -> Self {
        Vb {
            ckpt,
            prefix: String::new(),
        }
    }

    /// A loader for `<prefix>.<name>` (or `<name>` at the root; `name` may be a full path).
    pub fn pp(&self, name: &str) -> Self {
        Vb {
            ckpt: self.ckpt,
            prefix: self.path(name),
        }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `<prefix>.<name>` as f32, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.ckpt.tensor_f32(&self.path(name), shape)
    }

    /// `<name>.weight (out, in)` and, when `bias`, `<name>.bias (out)`.
    pub fn linear(&self, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let vb = self.pp(name);
        Ok(Linear {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(vb.get("bias", &[out_dim])?)
            } else {
                None
            },
            in_dim,
            out_dim,
        })
    }

    /// A Gemma RMSNorm `<name>.weight`, returned as the applied scale `1 + w`.
    pub fn gemma_norm(&self, name: &str, width: usize) -> Result<Vec<f32>> {
        let w = self.pp(name).get("weight", &[width])?;
        Ok(w.into_iter().map(|w| 1.0 + w).collect())
    }
}
