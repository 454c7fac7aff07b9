//! Template versions compiled once per worker. Versions are immutable, so a version fetched
//! and compiled for one delivery serves every later delivery of it; within a version,
//! `CompiledVersion` compiles each (locale, variant, channel) part on first use.
//!
//! Providers render through `crate::render(context)`, which only sees the delivery's context.
//! The pipeline runs each provider call inside `with_version`, a task-local scope naming the
//! delivery and its cached version, so `render` uses the compiled version without a change to
//! the `ChannelProvider` interface. Outside such a scope (a provider's own tests) `render`
//! compiles from `DeliveryContext::template_content`, with the same result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use herald_db::deliveries::TemplateVersionRef;
use herald_domain::DeliveryId;
use herald_templates::{CompiledVersion, VersionContent};

/// The most versions kept; past it the cache starts over (a worker normally sends a handful
/// of templates, and a miss costs one query and a compile).
const CAPACITY: usize = 1024;

/// One cached version: its stored JSON (what `DeliveryContext::template_content` carries) and
/// its compiled parts.
#[derive(Debug)]
pub(crate) struct CachedVersion {
    /// The stored content, as the database holds it.
    pub(crate) stored: serde_json::Value,
    /// Its parts, compiled on first use.
    pub(crate) compiled: CompiledVersion,
}

/// Compiled template versions by template id and version.
#[derive(Debug, Default)]
pub(crate) struct TemplateCache {
    versions: Mutex<HashMap<TemplateVersionRef, Arc<CachedVersion>>>,
}

impl TemplateCache {
    /// The cached `version`, if any.
    pub(crate) fn get(&self, version: &TemplateVersionRef) -> Option<Arc<CachedVersion>> {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(version)
            .cloned()
    }

    /// Caches `version` with its stored content. Content that does not parse is not cached
    /// (`None`): `render` then reports it, permanently, as it would without a cache.
    pub(crate) fn insert(
        &self,
        version: TemplateVersionRef,
        stored: serde_json::Value,
    ) -> Option<Arc<CachedVersion>> {
        let content = VersionContent::from_stored(stored.clone()).ok()?;
        let cached = Arc::new(CachedVersion {
            stored,
            compiled: CompiledVersion::new(content),
        });
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.len() >= CAPACITY {
            versions.clear();
        }
        versions.insert(version, Arc::clone(&cached));
        Some(cached)
    }
}

tokio::task_local! {
    /// The delivery whose provider call is running and its compiled template version.
    static ATTEMPT: (DeliveryId, Arc<CachedVersion>);
}

/// Runs `call` (a provider call for `delivery_id`) with `version` as the delivery's compiled
/// template version.
pub(crate) async fn with_version<F: Future>(
    delivery_id: DeliveryId,
    version: Arc<CachedVersion>,
    call: F,
) -> F::Output {
    ATTEMPT.scope((delivery_id, version), call).await
}

/// The compiled version of `delivery_id` when called inside its provider call's scope.
pub(crate) fn version_of(delivery_id: DeliveryId) -> Option<Arc<CachedVersion>> {
    ATTEMPT
        .try_with(|(scoped, version)| (*scoped == delivery_id).then(|| Arc::clone(version)))
        .ok()
        .flatten()
}
