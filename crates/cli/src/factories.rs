//! `gantry factories`: the registered factories, their load, whether they claim (and if
//! not, why) and their health.

use crate::command::Format;
use crate::error::{CliError, from_client};
use crate::output::{self, Table};
use gantry_client::Client;
use gantry_protocol::FactoryStatus;

/// `gantry factories [--json]`.
pub async fn list(client: &Client, format: Format) -> Result<(), CliError> {
    let factories = client
        .factories()
        .await
        .map_err(|e| from_client(e, client.base()))?;
    if format == Format::Json {
        output::json(&factories);
        return Ok(());
    }
    if factories.is_empty() {
        output::note(
            "no factories yet: `gantry serve` runs an embedded one, `gantry factory --url URL` \
             a remote one",
        );
        return Ok(());
    }
    output::line(render(&factories));
    Ok(())
}

/// The table, then one line for each factory that does not claim, saying why (the
/// reason is too long for a column).
fn render(factories: &[FactoryStatus]) -> String {
    let mut out = table(factories).render();
    let reasons: Vec<String> = factories
        .iter()
        .filter_map(|f| {
            f.stats
                .admission
                .as_ref()
                .map(|why| format!("{} ({}): {why}", f.name, f.id))
        })
        .collect();
    if !reasons.is_empty() {
        out.push_str("\n\n");
        out.push_str(&reasons.join("\n"));
    }
    out
}

/// The factories as a table, one row each.
fn table(factories: &[FactoryStatus]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "ID>",
        "SEATS>",
        "RUNNING>",
        "CAPABILITIES",
        "LAST SEEN",
        "LOAD>",
        "FREE MEM>",
        "FREE DISK>",
        "CLAIMING",
        "HEALTH",
    ]);
    for f in factories {
        t.row(vec![
            f.name.clone(),
            f.id.to_string(),
            f.seats.to_string(),
            f.running.to_string(),
            if f.capabilities.is_empty() {
                "-".to_string()
            } else {
                f.capabilities.join(",")
            },
            format!(
                "{} ago",
                output::short_duration(i64::try_from(f.last_seen_ago_ms).unwrap_or(i64::MAX))
            ),
            f.stats
                .load_1m
                .map_or_else(|| "-".to_string(), |l| format!("{l:.2}")),
            size_mib(f.stats.free_memory_mb),
            size_mib(f.stats.free_disk_mb),
            // As of its last heartbeat; why not is under the table.
            if f.stats.admission.is_some() {
                "no"
            } else {
                "yes"
            }
            .to_string(),
            f.health.to_string(),
        ]);
    }
    t
}

/// A size in MiB, shortened: `512M`, `3.5G`, `1.2T`; `-` when not reported.
fn size_mib(mib: Option<u64>) -> String {
    const GIB: u64 = 1024;
    const TIB: u64 = 1024 * 1024;
    match mib {
        None => "-".to_string(),
        Some(m) if m < GIB => format!("{m}M"),
        Some(m) if m < TIB => format!("{:.1}G", m as f64 / GIB as f64),
        Some(m) => format!("{:.1}T", m as f64 / TIB as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::FactoryId;
    use gantry_protocol::{Health, Heartbeat};

    #[test]
    fn sizes_are_shortened() {
        assert_eq!(size_mib(None), "-");
        assert_eq!(size_mib(Some(512)), "512M");
        assert_eq!(size_mib(Some(3584)), "3.5G");
        assert_eq!(size_mib(Some(1024 * 1024 * 6 / 5)), "1.2T");
    }

    #[test]
    fn the_table_shows_every_column_and_why_a_factory_does_not_claim() {
        let up = FactoryStatus {
            id: FactoryId(1),
            name: "embedded".into(),
            seats: 4,
            capabilities: Vec::new(),
            running: 2,
            last_seen: 0,
            last_seen_ago_ms: 2300,
            stats: Heartbeat {
                load_1m: Some(0.5),
                free_memory_mb: Some(2048),
                free_disk_mb: Some(100),
                admission: None,
            },
            health: Health::Up,
        };
        let full = FactoryStatus {
            id: FactoryId(7),
            name: "full-disk".into(),
            running: 0,
            stats: Heartbeat {
                admission: Some(
                    "not claiming: 100 MiB free on the disk of /data, under the minimum of \
                     1024 MiB"
                        .into(),
                ),
                ..up.stats.clone()
            },
            ..up.clone()
        };
        let down = FactoryStatus {
            id: FactoryId(12),
            name: "gpu-box".into(),
            capabilities: vec!["docker".into(), "gpu=a100".into()],
            running: 0,
            last_seen_ago_ms: 245_000,
            stats: Heartbeat::default(),
            health: Health::Down,
            ..up.clone()
        };
        assert_eq!(
            render(&[up.clone(), full, down.clone()]),
            "NAME       ID  SEATS  RUNNING  CAPABILITIES     LAST SEEN  LOAD  FREE MEM  FREE DISK  CLAIMING  HEALTH\n\
             embedded    1      4        2  -                2.3s ago   0.50      2.0G       100M  yes       up\n\
             full-disk   7      4        0  -                2.3s ago   0.50      2.0G       100M  no        up\n\
             gpu-box    12      4        0  docker,gpu=a100  4m05s ago     -         -          -  yes       down\n\
             \n\
             full-disk (7): not claiming: 100 MiB free on the disk of /data, under the minimum of 1024 MiB"
        );
        assert!(
            !render(&[up, down]).contains("not claiming"),
            "no reasons when every factory claims"
        );
    }
}
