//! The variant statistics of the database as messages (template contents convert in
//! `herald-proto`).

use herald_db::variants::VariantCounts;
use herald_domain::two_proportion_z_test;
use herald_proto::template as pb;

pub(super) fn variant_stats_message(
    row: VariantCounts,
    control: Option<&VariantCounts>,
) -> pb::VariantStats {
    let count = |value: i64| u64::try_from(value).unwrap_or_default();
    let rate = |part: i64, whole: i64| {
        if whole > 0 {
            // Counts are far below 2^52, where f64 stops being exact.
            #[allow(clippy::cast_precision_loss)]
            let rate = part as f64 / whole as f64;
            rate
        } else {
            0.0
        }
    };
    let versus = |successes: fn(&VariantCounts) -> i64| {
        let control = control?;
        let test = two_proportion_z_test(
            count(successes(control)),
            count(control.delivered),
            count(successes(&row)),
            count(row.delivered),
        )?;
        Some(pb::Significance {
            z: test.z,
            p_value: test.p_value,
        })
    };
    pb::VariantStats {
        version: u32::try_from(row.version).unwrap_or_default(),
        variant: row.variant.clone(),
        sent: count(row.sent),
        delivered: count(row.delivered),
        opened: count(row.opened),
        clicked: count(row.clicked),
        delivery_rate: rate(row.delivered, row.sent),
        open_rate: rate(row.opened, row.delivered),
        click_rate: rate(row.clicked, row.delivered),
        open_rate_vs_control: versus(|counts| counts.opened),
        click_rate_vs_control: versus(|counts| counts.clicked),
    }
}
