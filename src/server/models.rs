//! The models a server has loaded: each is loaded from the store on first use, by name as
//! `hearth run` resolves it, with its own scheduler thread, and stays loaded (no `keep_alive`
//! eviction yet). Loads happen one at a time, off the async threads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::engine::LoadOptions;
use crate::runtime::Pooling;
use crate::store::{ModelInfo, ModelName, Store, StoredModel};
use crate::structured::Grammars;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::Error;

use super::scheduler::{Limits, Scheduler};
use super::ApiError;

/// A model ready to serve.
pub struct LoadedModel {
    pub stored: StoredModel,
    pub tokenizer: Arc<Tokenizer>,
    /// `Err`: the model has no usable template (raw prompts still work).
    pub template: std::result::Result<ChatTemplate, String>,
    pub info: ModelInfo,
    pub scheduler: Scheduler,
    /// Context of a request that sets no `num_ctx`.
    pub n_ctx: usize,
    pub device: String,
    pub load_time: Duration,
    pub loaded_at: SystemTime,
    /// Structured output's grammar compiler for this vocabulary (built on first use).
    pub grammars: Grammars,
    /// How embeddings pool token vectors (`<arch>.pooling_type`).
    pub pooling: Pooling,
}

pub struct Models {
    pub store: Store,
    load: LoadOptions,
    limits: Limits,
    loaded: Mutex<BTreeMap<String, Arc<LoadedModel>>>,
}

impl Models {
    pub fn new(store: Store, load: LoadOptions, limits: Limits) -> Models {
        Models {
            store,
            load,
            limits,
            loaded: Mutex::new(BTreeMap::new()),
        }
    }

    /// The model called `name` (parsed by the store's rules), and whether this call loaded it.
    pub async fn get(&self, name: &str) -> Result<(Arc<LoadedModel>, bool), ApiError> {
        let parsed: ModelName = name
            .parse()
            .map_err(|e: Error| ApiError::bad_request(e.to_string()))?;
        let key = parsed.to_string();
        let mut loaded = self.loaded.lock().await;
        if let Some(m) = loaded.get(&key) {
            return Ok((m.clone(), false));
        }
        if !self.store.exists(&parsed) {
            return Err(ApiError::not_found(name));
        }
        let store =
            Store::open(self.store.root()).map_err(|e| ApiError::internal(e.to_string()))?;
        let load = self.load.clone();
        let limits = self.limits;
        let model = tokio::task::spawn_blocking(move || load_model(&store, &parsed, load, limits))
            .await
            .map_err(|e| ApiError::internal(format!("the loading task failed: {e}")))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let model = Arc::new(model);
        loaded.insert(key, model.clone());
        Ok((model, true))
    }

    /// The loaded models, by name.
    pub async fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.loaded.lock().await.values().cloned().collect()
    }
}

fn load_model(
    store: &Store,
    name: &ModelName,
    load: LoadOptions,
    limits: Limits,
) -> crate::Result<LoadedModel> {
    let stored = store.load(name)?;
    let (scheduler, loaded) = Scheduler::spawn(stored.model_path.clone(), load, limits)?;
    let template = crate::prompt::chat_template(&stored, &loaded.gguf, &loaded.tokenizer)
        .map_err(|e| e.to_string());
    Ok(LoadedModel {
        info: ModelInfo::from_gguf(&loaded.gguf)?,
        grammars: Grammars::new(loaded.tokenizer.clone()),
        pooling: Pooling::from_gguf(&loaded.gguf)?,
        tokenizer: loaded.tokenizer,
        template,
        scheduler,
        n_ctx: loaded.n_ctx,
        device: loaded.device,
        load_time: loaded.load_time,
        loaded_at: SystemTime::now(),
        stored,
    })
}
