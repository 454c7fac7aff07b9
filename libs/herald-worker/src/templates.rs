//! Template versions compiled once per worker. Versions are immutable, so a version fetched
//! and compiled for one delivery serves every later delivery of it; within a version,
//! `CompiledVersion` compiles each (locale, variant, channel) part on first use. Each
//! delivery's `DeliveryContext` holds its version, so providers render without a lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use herald_db::deliveries::TemplateVersionRef;
use herald_templates::{CompiledVersion, VersionContent};

/// The most versions kept; past it the cache starts over (a worker normally sends a handful
/// of templates, and a miss costs one query and a compile).
const CAPACITY: usize = 1024;

/// Compiled template versions by template id and version.
#[derive(Debug, Default)]
pub(crate) struct TemplateCache {
    versions: Mutex<HashMap<TemplateVersionRef, Arc<CompiledVersion>>>,
}

impl TemplateCache {
    /// The cached `version`, if any.
    pub(crate) fn get(&self, version: &TemplateVersionRef) -> Option<Arc<CompiledVersion>> {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(version)
            .cloned()
    }

    /// Compiles `content` (its parts on first use) and caches it.
    pub(crate) fn insert(&self, version: TemplateVersionRef, content: VersionContent) {
        let compiled = Arc::new(CompiledVersion::new(content));
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.len() >= CAPACITY {
            versions.clear();
        }
        versions.insert(version, compiled);
    }
}
