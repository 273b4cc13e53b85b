//! MB/s of the DAG filter alone on REDCap-like CSV, JSON and XML answers (no network),
//! for tuning it. Usage: [FORMATS=csv,json,xml] [CHUNK=BYTES] [FILE=CSV] dag_filter_speed [MB]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use redcap_gateway::redcap::dag_filter::{DagFilter, Format};

fn rows(format: Format, mb: usize) -> Vec<u8> {
    let mut s = String::new();
    match format {
        Format::Csv(_) => {
            s.push_str("record_id,redcap_data_access_group,age,score,visit_date,notes\n")
        }
        Format::Json => s.push('['),
        Format::Xml => s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<records>\n"),
    }
    let mut i = 0u64;
    while s.len() < mb << 20 {
        let dag = if i % 4 == 3 { "site_b" } else { "site_a" };
        let (id, age, score, day) = (100_000 + i, 20 + i % 50, i * 7 % 100, 1 + i % 28);
        let notes = "seen in clinic; no change since the last visit";
        match format {
            Format::Csv(_) => s.push_str(&format!("{id},{dag},{age},{score},2026-01-{day:02},{notes}\n")),
            Format::Json => {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{{\"record_id\":\"{id}\",\"redcap_data_access_group\":\"{dag}\",\"age\":\"{age}\",\"score\":\"{score}\",\"visit_date\":\"2026-01-{day:02}\",\"notes\":\"{notes}\"}}"));
            }
            Format::Xml => s.push_str(&format!("<item><record_id><![CDATA[{id}]]></record_id><redcap_data_access_group><![CDATA[{dag}]]></redcap_data_access_group><age><![CDATA[{age}]]></age><score><![CDATA[{score}]]></score><visit_date><![CDATA[2026-01-{day:02}]]></visit_date><notes><![CDATA[{notes}]]></notes></item>\n")),
        }
        i += 1;
    }
    match format {
        Format::Csv(_) => {}
        Format::Json => s.push(']'),
        Format::Xml => s.push_str("</records>"),
    }
    s.into_bytes()
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let allowed: Arc<BTreeSet<String>> = Arc::new(["site_a".to_string()].into_iter().collect());
    for (name, format) in [
        ("csv", Format::Csv(b',')),
        ("json", Format::Json),
        ("xml", Format::Xml),
    ] {
        // FORMATS: which to run (e.g. "csv"); all three without it.
        if std::env::var("FORMATS").is_ok_and(|f| !f.split(',').any(|n| n == name)) {
            continue;
        }
        // FILE: a CSV answer saved from somewhere (e.g. the bench stub).
        let input = match (std::env::var("FILE"), format) {
            (Ok(f), Format::Csv(_)) => std::fs::read(f).expect("FILE is readable"),
            _ => rows(format, mb),
        };
        for keep in [true, false] {
            let mut f = DagFilter::new(format, false, allowed.clone(), keep);
            let t = Instant::now();
            let mut written = 0usize;
            let step: usize = std::env::var("CHUNK")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(16 << 10);
            for chunk in input.chunks(step) {
                let mut out = Vec::with_capacity(chunk.len());
                f.feed(chunk, &mut out).expect("readable");
                written += out.len();
            }
            let mut out = Vec::new();
            f.finish(&mut out).expect("ends");
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{name} keep_column={keep}: {:.0} MB/s of answer ({} MB in, {} MB out)",
                input.len() as f64 / 1048576.0 / secs,
                input.len() >> 20,
                (written + out.len()) >> 20
            );
        }
    }
}
