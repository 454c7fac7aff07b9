//! User namespaces: the product users a principal may act for, as user-id prefixes, so that
//! several products can share one Herald without seeing each other's users.

use std::fmt;

use herald_domain::ValueError;

use crate::fields::MAX_USER_ID;

/// The user namespaces a caller is bound to. None (the default) means every user, as before
/// namespaces existed; otherwise a user id is the caller's when it starts with one of the
/// prefixes.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserNamespaces {
    prefixes: Vec<String>,
}

impl UserNamespaces {
    /// The namespaces of configured `prefixes`, each checked by [`check_prefix`].
    pub(crate) fn parse(prefixes: &[String]) -> Result<Self, ValueError> {
        for prefix in prefixes {
            check_prefix(prefix)?;
        }
        Ok(Self {
            prefixes: prefixes.to_vec(),
        })
    }

    /// Whether these namespaces leave every user reachable (none are configured).
    pub(crate) fn is_unrestricted(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Whether `user_id` lies in one of the namespaces (always, when unrestricted).
    pub(crate) fn contains(&self, user_id: &str) -> bool {
        self.is_unrestricted()
            || self
                .prefixes
                .iter()
                .any(|prefix| user_id.starts_with(prefix.as_str()))
    }
}

impl fmt::Display for UserNamespaces {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, prefix) in self.prefixes.iter().enumerate() {
            if index > 0 {
                formatter.write_str(", ")?;
            }
            write!(formatter, "`{prefix}`")?;
        }
        Ok(())
    }
}

/// A namespace is a user-id prefix: 1 to `MAX_USER_ID` bytes without control characters,
/// ending in ASCII punctuation (`shop:`), so that `shop` cannot also take in `shopping:`'s
/// users by accident.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ValueError> {
    if prefix.trim().is_empty()
        || prefix.len() > MAX_USER_ID
        || prefix.chars().any(char::is_control)
    {
        return Err(ValueError(format!(
            "must be 1 to {MAX_USER_ID} non-blank characters without control characters"
        )));
    }
    if !prefix.ends_with(|last: char| last.is_ascii_punctuation()) {
        return Err(ValueError(format!(
            "`{prefix}` must end with a separator such as `:` (a user-id prefix without one \
             would also match longer names)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::UserNamespaces;

    fn namespaces(prefixes: &[&str]) -> UserNamespaces {
        UserNamespaces::parse(
            &prefixes
                .iter()
                .map(|prefix| (*prefix).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn a_user_id_is_in_a_namespace_when_it_starts_with_its_prefix() {
        let bound = namespaces(&["shop:", "blog/"]);
        assert!(bound.contains("shop:42"));
        assert!(bound.contains("blog/ada"));
        assert!(!bound.contains("shopping:42"));
        assert!(!bound.contains("42"));
        assert!(
            !bound.contains("SHOP:42"),
            "prefixes are case-sensitive, like user ids"
        );
        assert_eq!(bound.to_string(), "`shop:`, `blog/`");
        let unrestricted = namespaces(&[]);
        assert!(unrestricted.is_unrestricted());
        assert!(unrestricted.contains("anyone"));
    }

    #[test]
    fn a_prefix_must_be_non_blank_and_end_with_a_separator() {
        for bad in ["", " ", "shop", "shop:\n", &format!("{}:", "x".repeat(255))] {
            assert!(
                UserNamespaces::parse(&[bad.to_owned()]).is_err(),
                "{bad:?} should be refused"
            );
        }
        for good in ["shop:", "tenant-7/", "a.", "ü:"] {
            assert!(
                UserNamespaces::parse(&[good.to_owned()]).is_ok(),
                "{good:?}"
            );
        }
    }
}
