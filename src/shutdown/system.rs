//! `GET /shutdown/system`: what a person checking the box wants to see. A figure the kernel does
//! not give (a sandbox hides some of /proc and /sys) is null, not an error.

use serde_json::{Value, json};
use sysinfo::{Components, MemoryRefreshKind, RefreshKind, System};

pub fn report() -> Value {
    let uptime = System::uptime().unwrap_or(0);
    let load = System::load_average().ok();
    let memory = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()))
        .ok()
        .map(|sys| {
            let (total, available) = (sys.total_memory(), sys.available_memory());
            json!({
                "total_bytes": total,
                "available_bytes": available,
                "used_bytes": total.saturating_sub(available),
                "percent": if total > 0 { ((total - available) as f64 * 1000.0 / total as f64).round() / 10.0 } else { 0.0 },
            })
        });
    let temperatures: Vec<Value> = Components::new_with_refreshed_list()
        .map(|components| {
            (&components)
                .into_iter()
                .filter_map(|c| {
                    c.temperature()
                        .map(|t| json!({"label": c.label(), "celsius": (t * 10.0).round() / 10.0}))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "uptime": {
            "days": uptime / 86_400,
            "hours": uptime % 86_400 / 3_600,
            "minutes": uptime % 3_600 / 60,
            "seconds": uptime % 60,
            "total_seconds": uptime,
        },
        "load_average": load.map(|l| json!({"one": l.one, "five": l.five, "fifteen": l.fifteen})),
        "memory": memory,
        "cpu_count": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "temperatures": temperatures,
    })
}
