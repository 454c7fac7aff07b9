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

    /// Compiles `content` (its parts on first use), caches it and returns it: the caller
    /// keeps what it loaded even when the cache starts over in between.
    pub(crate) fn insert(
        &self,
        version: TemplateVersionRef,
        content: VersionContent,
    ) -> Arc<CompiledVersion> {
        let compiled = Arc::new(CompiledVersion::new(content));
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.len() >= CAPACITY {
            versions.clear();
        }
        versions.insert(version, Arc::clone(&compiled));
        compiled
    }
}

#[cfg(test)]
mod tests {
    use herald_db::deliveries::TemplateVersionRef;
    use herald_domain::TemplateId;
    use herald_templates::VersionContent;

    use super::{CAPACITY, TemplateCache};

    #[test]
    fn a_full_cache_starts_over_and_still_hands_back_what_was_inserted() {
        let content = VersionContent::from_stored(serde_json::json!({
            "sms": {"text": "Hi"}
        }))
        .unwrap();
        let cache = TemplateCache::default();
        let template_id = TemplateId::generate();
        let version = |version| TemplateVersionRef {
            template_id,
            version,
        };
        let first = cache.insert(version(0), content.clone());
        for number in 1..=i32::try_from(CAPACITY).unwrap() {
            cache.insert(version(number), content.clone());
        }
        assert!(cache.get(&version(0)).is_none(), "the cache started over");
        // A batch that loaded version 0 before that still renders with it.
        assert_eq!(first.content(), &content);
        assert!(cache.get(&version(1024)).is_some());
    }
}
