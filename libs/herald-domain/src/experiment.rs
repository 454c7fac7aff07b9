//! A/B tests: deterministic variant assignment and the two-proportion z-test that compares a
//! variant's open or click rate with the control's.
//!
//! Assignment hashes the experiment (the template key) and the recipient with SHA-256 onto a
//! point in `[0, total weight)` and picks the variant whose cumulative weight range holds it.
//! The hash is stable across processes, versions and Rust releases (unlike std's
//! `DefaultHasher`), so the same recipient always gets the same variant for the same weights.

use sha2::{Digest, Sha256};

/// Who a variant is assigned to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The product's user id.
    User(&'a str),
    /// A direct address (email, phone, chat destination) of a recipient without a user id.
    /// Only hashed: it is never stored or logged by the assignment.
    Address(&'a str),
}

/// Addresses are personal data: Debug output never shows them.
impl std::fmt::Debug for Subject<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(user_id) => formatter.debug_tuple("User").field(user_id).finish(),
            Self::Address(_) => formatter.write_str("Address(<redacted>)"),
        }
    }
}

/// The index of the variant `subject` gets in `experiment`, given the variants' `weights` in
/// order; `None` when there are no variants or every weight is 0. A variant's chance is its
/// weight over the total.
pub fn assign_variant(experiment: &str, subject: Subject<'_>, weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|weight| u64::from(*weight)).sum();
    if total == 0 {
        return None;
    }
    let point = bucket(experiment, subject, total);
    let mut upper = 0u64;
    weights.iter().position(|weight| {
        upper += u64::from(*weight);
        point < upper
    })
}

/// The recipient's point in `[0, total)`: the first 8 bytes of
/// SHA-256(`herald.variant.v1` NUL experiment NUL kind NUL subject) as a big-endian fraction
/// of 2^64, scaled to `total` (multiply-shift, no modulo bias worth the name).
fn bucket(experiment: &str, subject: Subject<'_>, total: u64) -> u64 {
    let (kind, value) = match subject {
        Subject::User(user_id) => ("user", user_id),
        Subject::Address(address) => ("address", address),
    };
    let mut hasher = Sha256::new();
    for part in ["herald.variant.v1", experiment, kind, value] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let fraction = u64::from_be_bytes(first);
    u64::try_from((u128::from(fraction) * u128::from(total)) >> 64).unwrap_or(total - 1)
}

/// The result of a two-proportion z-test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// The z statistic of (variant rate − control rate) over the pooled standard error;
    /// positive when the variant does better.
    pub z: f64,
    /// The two-sided p-value: the chance of a difference at least this large if both
    /// proportions were equal.
    pub p_value: f64,
}

/// Compares `variant_successes / variant_trials` with `control_successes / control_trials`
/// (pooled two-proportion z-test, normal approximation). `None` when either group has no
/// trials or the pooled proportion is 0 or 1 (no variance: nothing to test).
pub fn two_proportion_z_test(
    control_successes: u64,
    control_trials: u64,
    variant_successes: u64,
    variant_trials: u64,
) -> Option<ZTest> {
    if control_trials == 0
        || variant_trials == 0
        || control_successes > control_trials
        || variant_successes > variant_trials
    {
        return None;
    }
    // Counts are far below 2^52, where f64 stops being exact.
    #[allow(clippy::cast_precision_loss)]
    let (x1, n1, x2, n2) = (
        control_successes as f64,
        control_trials as f64,
        variant_successes as f64,
        variant_trials as f64,
    );
    let pooled = (x1 + x2) / (n1 + n2);
    let standard_error = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if !standard_error.is_normal() {
        return None;
    }
    let z = (x2 / n2 - x1 / n1) / standard_error;
    Some(ZTest {
        z,
        p_value: libm::erfc(z.abs() / std::f64::consts::SQRT_2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_recipient_always_gets_the_same_variant() {
        for user in ["ada", "grace", "linus", "user-42"] {
            let first = assign_variant("welcome", Subject::User(user), &[70, 30]);
            for _ in 0..10 {
                assert_eq!(
                    assign_variant("welcome", Subject::User(user), &[70, 30]),
                    first
                );
            }
        }
    }

    #[test]
    fn assignment_is_pinned_to_sha256_so_it_never_changes_between_releases() {
        // Recorded once (and reproduced with Python's hashlib); a change here would move live
        // users between variants.
        let got: Vec<Option<usize>> = ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6"]
            .into_iter()
            .map(|user| assign_variant("welcome", Subject::User(user), &[50, 50]))
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [Option<usize>; 6] = [Some(0), Some(0), Some(1), Some(0), Some(1), Some(0)];

    #[test]
    fn users_split_close_to_the_weights() {
        let weights = [70, 20, 10];
        let users = 20_000;
        let mut counts = [0usize; 3];
        for user in 0..users {
            let index =
                assign_variant("checkout", Subject::User(&format!("user-{user}")), &weights)
                    .unwrap();
            counts[index] += 1;
        }
        for (count, weight) in counts.iter().zip(weights) {
            let expected = f64::from(users) * f64::from(weight) / 100.0;
            let sd = (expected * (1.0 - f64::from(weight) / 100.0)).sqrt();
            // Five standard deviations: a fixed input, so this never flakes.
            assert!(
                (*count as f64 - expected).abs() < 5.0 * sd,
                "{counts:?} for weights {weights:?}"
            );
        }
    }

    #[test]
    fn experiments_and_subject_kinds_are_independent() {
        let differ = (0..200)
            .filter(|user| {
                let user = format!("user-{user}");
                assign_variant("a", Subject::User(&user), &[1, 1])
                    != assign_variant("b", Subject::User(&user), &[1, 1])
            })
            .count();
        assert!((60..140).contains(&differ), "{differ}");
        let differ = (0..200)
            .filter(|user| {
                let user = format!("user-{user}");
                assign_variant("a", Subject::User(&user), &[1, 1])
                    != assign_variant("a", Subject::Address(&user), &[1, 1])
            })
            .count();
        assert!((60..140).contains(&differ), "{differ}");
    }

    #[test]
    fn zero_weights_are_never_chosen_and_no_weights_assign_nothing() {
        assert_eq!(assign_variant("x", Subject::User("u"), &[]), None);
        assert_eq!(assign_variant("x", Subject::User("u"), &[0, 0]), None);
        for user in 0..100 {
            assert_eq!(
                assign_variant("x", Subject::User(&user.to_string()), &[0, 5, 0]),
                Some(1)
            );
        }
    }

    #[test]
    fn addresses_are_redacted_in_debug_output() {
        assert_eq!(
            format!("{:?}", Subject::Address("ada@example.com")),
            "Address(<redacted>)"
        );
    }

    #[test]
    fn z_test_matches_the_textbook_value() {
        // 120 of 200 vs 150 of 300: pooled p = 0.54, SE = 0.04550, z = −2.198, p = 0.0280
        // (computed independently with Python's math.erfc).
        let test = two_proportion_z_test(120, 200, 150, 300).unwrap();
        assert!((test.z - -2.197_934_911_319_289).abs() < 1e-9, "{test:?}");
        assert!(
            (test.p_value - 0.027_953_744_613_591_555).abs() < 1e-9,
            "{test:?}"
        );
        // Swapping the groups flips the sign, not the p-value.
        let swapped = two_proportion_z_test(150, 300, 120, 200).unwrap();
        assert!((swapped.z + test.z).abs() < 1e-12);
        assert!((swapped.p_value - test.p_value).abs() < 1e-12);
    }

    #[test]
    fn z_of_1_96_is_the_five_percent_level() {
        let p = libm::erfc(1.959_963_984_540_054 / std::f64::consts::SQRT_2);
        assert!((p - 0.05).abs() < 1e-12, "{p}");
    }

    #[test]
    fn z_test_needs_trials_and_variance() {
        assert_eq!(two_proportion_z_test(0, 0, 1, 10), None);
        assert_eq!(two_proportion_z_test(1, 10, 0, 0), None);
        assert_eq!(two_proportion_z_test(0, 10, 0, 10), None);
        assert_eq!(two_proportion_z_test(10, 10, 10, 10), None);
        assert_eq!(two_proportion_z_test(11, 10, 1, 10), None);
        let equal = two_proportion_z_test(5, 10, 5, 10).unwrap();
        assert_eq!(equal.z, 0.0);
        assert!((equal.p_value - 1.0).abs() < 1e-12);
    }
}
