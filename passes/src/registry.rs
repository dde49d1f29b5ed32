//! Passes by name: the built-in ones, plus whatever users register.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cleanup::{Canonicalize, ConstantFold, Cse, Dce, SimplifyOuterProducts};
use crate::fusion::{
    FuseAddRmsNorm, FuseAttention, FuseGelu, FuseGemm, FuseLayerNorm, FuseRmsNorm, FuseRope, FuseSwiglu,
};
use crate::{Pass, PassError};

/// Every pass a pipeline can name.
#[derive(Clone)]
pub struct PassRegistry {
    passes: BTreeMap<String, Arc<dyn Pass>>,
}

impl Default for PassRegistry {
    fn default() -> Self {
        PassRegistry::builtin()
    }
}

impl PassRegistry {
    /// The built-in passes.
    pub fn builtin() -> PassRegistry {
        let mut r = PassRegistry {
            passes: BTreeMap::new(),
        };
        r.register(Arc::new(Canonicalize));
        r.register(Arc::new(ConstantFold));
        r.register(Arc::new(Cse));
        r.register(Arc::new(Dce));
        r.register(Arc::new(SimplifyOuterProducts));
        r.register(Arc::new(FuseGemm));
        r.register(Arc::new(crate::fusion::MatmulToLinear));
        r.register(Arc::new(FuseRmsNorm));
        r.register(Arc::new(FuseSwiglu));
        r.register(Arc::new(FuseRope));
        r.register(Arc::new(FuseAttention));
        r.register(Arc::new(FuseLayerNorm));
        r.register(Arc::new(FuseAddRmsNorm));
        r.register(Arc::new(FuseGelu));
        r.register(Arc::new(crate::fusion::SinkRopeTransposes));
        r.register(Arc::new(crate::kv_cache::InsertKvCache));
        r.register(Arc::new(crate::past_kv::InsertPastKv));
        r.register(Arc::new(crate::quant::CastWeights));
        r.register(Arc::new(crate::quant::QuantizeInt8));
        r
    }

    /// Adds (or replaces) a pass under its name.
    pub fn register(&mut self, pass: Arc<dyn Pass>) {
        self.passes.insert(pass.name().to_string(), pass);
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn Pass>, PassError> {
        self.passes.get(name).cloned().ok_or_else(|| PassError::Unknown {
            name: name.into(),
            known: self.passes.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Every registered pass, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Pass>> {
        self.passes.values()
    }
}
