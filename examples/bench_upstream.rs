//! A fast stand-in for REDCap, for the benchmark only: answers any request with a fixed
//! ~2 KB CSV export, or streams N bytes when the body holds `bench_bytes_N` (as the
//! `records` value, which export rights pass through). The metadata the gateway fetches
//! for restricted grants (`content=metadata`, `exportFieldNames`, `project`) is answered
//! in JSON, describing the CSV's columns.
//! Usage: bench_upstream ADDR [RESPONSE_BYTES]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn csv(size: usize) -> Bytes {
    let mut s = String::from("record_id,name,age,visit_date,score\n");
    let mut i = 1;
    while s.len() < size {
        s.push_str(&format!(
            "{i},Participant {i},{},2026-01-{:02},{}\n",
            20 + i % 50,
            1 + i % 28,
            i * 7 % 100
        ));
        i += 1;
    }
    s.truncate(size);
    Bytes::from(s)
}

fn requested_bytes(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("bench_bytes_")? + "bench_bytes_".len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

fn big_header() -> Bytes {
    Bytes::from_static(b"record_id,redcap_data_access_group,age,score,visit_date,notes\n")
}

fn big_chunk() -> Bytes {
    let mut s = String::with_capacity(64 * 1024 + 64);
    let mut i = 0u32;
    while s.len() < 64 * 1024 - 64 {
        let dag = if i % 4 == 3 { "site_b" } else { "site_a" };
        // About 90 bytes, as a row of a few short fields and a note.
        s.push_str(&format!(
            "{},{dag},{},{},2026-01-{:02},seen in clinic; no change since the last visit\n",
            100_000 + i,
            20 + i % 50,
            i * 7 % 100,
            1 + i % 28
        ));
        i += 1;
    }
    Bytes::from(s)
}

const METADATA: &str = r#"[
{"field_name":"record_id","form_name":"visit","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":""},
{"field_name":"name","form_name":"visit","field_type":"text","text_validation_type_or_show_slider_number":"","identifier":"y"},
{"field_name":"age","form_name":"visit","field_type":"text","text_validation_type_or_show_slider_number":"integer","identifier":""},
{"field_name":"visit_date","form_name":"visit","field_type":"text","text_validation_type_or_show_slider_number":"date_ymd","identifier":""},
{"field_name":"score","form_name":"visit","field_type":"calc","text_validation_type_or_show_slider_number":"","identifier":""}]"#;
const FIELD_NAMES: &str = r#"[{"original_field_name":"record_id","choice_value":"","export_field_name":"record_id"},
{"original_field_name":"name","choice_value":"","export_field_name":"name"},
{"original_field_name":"age","choice_value":"","export_field_name":"age"},
{"original_field_name":"visit_date","choice_value":"","export_field_name":"visit_date"},
{"original_field_name":"score","choice_value":"","export_field_name":"score"}]"#;
const PROJECT: &str = r#"{"project_id":1,"project_title":"Bench","is_longitudinal":0}"#;

/// The JSON answer to a metadata call, if the body is one.
fn metadata_answer(body: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(body).ok()?;
    let content = text.split('&').find_map(|kv| kv.strip_prefix("content="))?;
    match content {
        "metadata" => Some(METADATA),
        "exportFieldNames" => Some(FIELD_NAMES),
        "project" => Some(PROJECT),
        _ => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18700".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2048);
    let export = csv(size);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let export = export.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let export = export.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let resp = match requested_bytes(&body) {
                        None if metadata_answer(&body).is_some() => hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(BodyExt::boxed(Full::new(Bytes::from_static(
                                metadata_answer(&body).unwrap_or("[]").as_bytes(),
                            )))),
                        Some(n) => {
                            // Whole CSV rows: a header, then 64 KiB chunks of rows (three
                            // in site_a for one in site_b), at least n bytes in all.
                            let (head, chunk) = (big_header(), big_chunk());
                            let chunks = n.div_ceil(chunk.len() as u64);
                            let len = head.len() as u64 + chunks * chunk.len() as u64;
                            let stream = futures_util::stream::iter(
                                std::iter::once(head)
                                    .chain((0..chunks).map(move |_| chunk.clone()))
                                    .map(|b| Ok::<_, Infallible>(Frame::data(b))),
                            );
                            hyper::Response::builder()
                                .header("content-type", "text/csv; charset=utf-8")
                                .header("content-length", len)
                                .body(BodyExt::boxed(StreamBody::new(stream)))
                        }
                        None => hyper::Response::builder()
                            .header("content-type", "text/csv; charset=utf-8")
                            .body(BodyExt::boxed(Full::new(export))),
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_else(|_| {
                        hyper::Response::new(BodyExt::boxed(Full::new(Bytes::new())))
                    }))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
