#![no_main]
//! The DAG filter on any answer, cut into chunks anywhere: never a panic; the same result
//! whatever the chunking; and when it accepts an answer, every row it lets out is of an
//! allowed DAG (flat answers with the column kept, read back with the fake's parser).

use std::collections::BTreeSet;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use redcap_gateway::fake_redcap::data::parse_rows;
use redcap_gateway::redcap::dag_filter::{DagFilter, Format, DAG_COLUMN};

fn run(format: Format, eav: bool, keep: bool, data: &[u8], step: usize) -> Option<Vec<u8>> {
    let allowed: Arc<BTreeSet<String>> = Arc::new(["site_a".to_string()].into_iter().collect());
    let mut f = DagFilter::new(format, eav, allowed, keep);
    let mut out = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        f.feed(chunk, &mut out).ok()?;
    }
    f.finish(&mut out).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let (format, name) = match mode % 3 {
        0 => (Format::Json, "json"),
        1 => (Format::Csv(b','), "csv"),
        _ => (Format::Xml, "xml"),
    };
    let eav = mode & 0x10 != 0;
    let keep = mode & 0x20 != 0;
    let step = usize::from(mode >> 6) * 7 + 1;
    let whole = run(format, eav, keep, body, body.len());
    let chunked = run(format, eav, keep, body, step);
    assert_eq!(whole, chunked, "the chunking changed the result");
    let Some(out) = whole else {
        return;
    };
    if eav || out.is_empty() {
        return;
    }
    // Read back as a client would (what that reader declines, it cannot show either).
    let Ok(rows) = parse_rows(name, &out) else {
        return;
    };
    for r in rows {
        match r.get(DAG_COLUMN) {
            Some(d) => assert!(keep && d == "site_a", "a row of {d:?} got out"),
            None => assert!(!keep, "a kept DAG column went missing"),
        }
    }
});
