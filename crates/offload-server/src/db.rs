//! The store, from async code.

use std::sync::Arc;

use offload_store::{Store, StoreError};

use crate::error::ActionError;

/// Runs a store operation on a blocking thread.
pub async fn call<T, F>(store: &Arc<Store>, f: F) -> Result<T, ActionError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}
