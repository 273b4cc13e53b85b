//! Differential test: real PHP (Debian php-cli) is the oracle for how REDCap reads a body.
//! For every generated body the gateway must read exactly what PHP reads, or reject it.

mod common;

use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redcap_gateway::redcap::multipart::{read_multipart, MultipartLimits};
use redcap_gateway::redcap::php_form::{parse_urlencoded, PhpArray, PhpKey, PhpLimits, PhpValue};
use serde_json::{json, Value};

struct Php {
    child: Child,
    port: u16,
}

impl Drop for Php {
    fn drop(&mut self) {
        // One process (no PHP_CLI_SERVER_WORKERS), so there is no group to signal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_php() -> Option<Php> {
    if !common::have("php", &["-v"]) {
        return None;
    }
    let port = common::free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php/oracle.php");
    let mut cmd = Command::new("php");
    cmd.args([
        "-d",
        "max_input_vars=1000",
        "-d",
        "max_input_nesting_level=64",
        "-d",
        "display_errors=0",
    ])
    .args(["-d", "post_max_size=64M", "-d", "upload_max_filesize=64M"])
    .arg("-S")
    .arg(format!("127.0.0.1:{port}"))
    .arg(script)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = cmd.spawn().expect("php starts");
    let php = Php { child, port };
    assert!(common::wait_for_port(port).await, "php -S did not start");
    Some(php)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn enc_array(a: &PhpArray) -> Value {
    let items: Vec<Value> = a
        .iter()
        .map(|(k, v)| match k {
            PhpKey::Int(i) => json!(["i", i.to_string(), enc(v)]),
            PhpKey::Str(s) => json!(["s", hex(s), enc(v)]),
        })
        .collect();
    json!(["a", items])
}

fn enc(v: &PhpValue) -> Value {
    match v {
        PhpValue::Str(s) => json!(["s", hex(s)]),
        PhpValue::Array(a) => enc_array(a),
    }
}

struct Oracle {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: String,
}

impl Oracle {
    fn new(php: &Php) -> Oracle {
        Oracle {
            client: Client::builder(TokioExecutor::new()).build_http(),
            url: format!("http://127.0.0.1:{}/", php.port),
        }
    }

    /// (`$_POST` canonical JSON text, `$_FILES` summary).
    async fn read(&self, content_type: &str, body: Vec<u8>) -> (String, Value) {
        let req = http::Request::post(&self.url)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.client.request(req).await.expect("php answers");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (post, files) = text
            .split_once('\n')
            .unwrap_or_else(|| panic!("php output: {text}"));
        (
            post.to_string(),
            serde_json::from_str(files).expect("files json"),
        )
    }

    async fn urlencoded(&self, body: &[u8]) -> String {
        self.read("application/x-www-form-urlencoded", body.to_vec())
            .await
            .0
    }
}

/// A small deterministic generator (xorshift), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const BASES: &[&str] = &[
    "content",
    "token",
    "action",
    "users",
    "data",
    "format",
    "returnFormat",
    "a",
    "b",
    "x",
    "mobile_app",
    "mobileApp",
    "123",
    "-4",
    "07",
    "-",
    "-0",
    "x-y",
    "9223372036854775808",
    "",
];
const PREFIXES: &[&str] = &[
    "", "", "", "", " ", "+", "%20", "++", "%2B", ".", "[", "%5B", "%00",
];
const INFIXES: &[&str] = &[
    "", "", "", "", ".", " ", "+", "%2E", "%20", "_", "%00", "[", "]", "%5b", "%5D",
];
const SUFFIXES: &[&str] = &[
    "",
    "",
    "",
    "[]",
    "[0]",
    "[1]",
    "[-1]",
    "[01]",
    "[ ]",
    "[ a]",
    "[a b]",
    "[a.b]",
    "[",
    "]",
    "[[]",
    "[]]",
    "[x]y",
    "[x][",
    "[x][y]",
    "[][]",
    "[][x]",
    "%5B%5D",
    "%5B0%5D",
    "%5Bx%5D%5By%5D",
    "[%00]",
    "[x%00y]",
    "%00[x]",
    "[9223372036854775807]",
    "[9223372036854775808]",
    "[-0]",
    "[ 1]",
    "[x]%5B1%5D",
    "[\u{e9}]",
];
const VALUES: &[&str] = &[
    "", "1", "user", "record", "delete", "a%26b", "%", "%zz", "%0", "%00x", "+", "a+b", "=", "a=b",
    "%3D", "%E9", "\u{e9}",
];

fn gen_name(r: &mut Rng) -> String {
    let mut s = String::new();
    s.push_str(r.pick(PREFIXES));
    let base = r.pick(BASES);
    if !base.is_empty() && r.below(4) == 0 {
        let cut = r.below(base.len() + 1);
        s.push_str(&base[..cut]);
        s.push_str(r.pick(INFIXES));
        s.push_str(&base[cut..]);
    } else {
        s.push_str(base);
    }
    for _ in 0..r.below(3) {
        s.push_str(r.pick(SUFFIXES));
    }
    s
}

fn gen_body(r: &mut Rng) -> String {
    let n = 1 + r.below(8);
    let mut parts = Vec::new();
    for _ in 0..n {
        let name = gen_name(r);
        match r.below(10) {
            0 => parts.push(name),
            1 => parts.push(String::new()),
            _ => parts.push(format!("{name}={}", r.pick(VALUES))),
        }
    }
    let mut body = parts.join("&");
    if r.below(6) == 0 {
        body.push('&');
    }
    body
}

#[tokio::test]
async fn gateway_reads_urlencoded_bodies_exactly_as_php() {
    let Some(php) = start_php().await else { return };
    let oracle = Oracle::new(&php);
    let seed: u64 = std::env::var("ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD);
    let count: usize = std::env::var("ORACLE_BODIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(seed);
    let mut disagreements = Vec::new();
    let mut rejected = 0;
    for _ in 0..count {
        let body = gen_body(&mut rng);
        let php_view = oracle.urlencoded(body.as_bytes()).await;
        match parse_urlencoded(body.as_bytes(), PhpLimits::default()) {
            Ok(form) => {
                let ours = enc_array(&form.post).to_string();
                if ours != php_view {
                    disagreements.push(format!("{body:?}\n  php:  {php_view}\n  ours: {ours}"));
                }
            }
            Err(_) => rejected += 1,
        }
    }
    eprintln!(
        "oracle: {count} bodies (seed {seed}), {rejected} rejected, {} disagreements",
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements with PHP, first:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(10)].join("\n")
    );
}

/// Each REDCAP.md rule, and each disagreement found while building the parser, by name.
#[tokio::test]
async fn named_examples_agree_with_php() {
    let Some(php) = start_php().await else { return };
    let oracle = Oracle::new(&php);
    let examples = [
        ("last key wins", "content=record&content=user"),
        ("append arrays", "x[]=a&x[]=b"),
        ("indexed arrays", "x[0]=a&x[1]=b"),
        (
            "one-based arrays (redcapAPI)",
            "users[1]=alice&users[2]=bob",
        ),
        ("array form of a scalar", "content[]=user"),
        ("dots and spaces", "a.b=1&a b=2&a+c=3"),
        ("lone bracket", "a[b=1&c[=2"),
        ("decode after split", "a%3Db%26c=1&x=%26%3D"),
        ("plus is space", "a=1+2&b+c=d"),
        ("NUL ends the name", "content%00x=user&tok%00en=y"),
        ("leading spaces dropped", "%20content=user&++action=delete"),
        ("empty name dropped", "=x&&=&content=record"),
        ("text after ] ignored", "a[b]c=1&d[e]f[g]=2"),
        ("deeper unterminated", "a[b][c=1"),
        ("space inside index", "a[ ]=1&a[ b]=2&a[b ]=3"),
        ("name starting with [", "[a]=1&[=2&]=3"),
        ("negative then append", "a[-5]=x&a[]=y"),
        (
            "numeric key forms",
            "a[0]=1&a[01]=2&a[-0]=3&a[+1]=4&a[9223372036854775808]=5",
        ),
        ("string then array", "a=1&a[]=2"),
        ("array then string", "a[]=1&a=2"),
        ("invalid escapes kept", "a=%zz%4&b%zz=1"),
        ("nesting at the limit", &format!("a{}=1", "[x]".repeat(64))),
        (
            "999 vars and empties",
            &format!(
                "{}&&",
                (0..998)
                    .map(|i| format!("k{i}=v"))
                    .collect::<Vec<_>>()
                    .join("&")
            ),
        ),
    ];
    for (name, body) in examples {
        let php_view = oracle.urlencoded(body.as_bytes()).await;
        let ours = enc_array(
            &parse_urlencoded(body.as_bytes(), PhpLimits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .post,
        )
        .to_string();
        assert_eq!(ours, php_view, "{name}: {body}");
    }
}

/// Past PHP's limits PHP silently drops data: those bodies must be rejected.
#[tokio::test]
async fn bodies_past_php_limits_are_rejected_because_php_would_truncate_them() {
    let Some(php) = start_php().await else { return };
    let oracle = Oracle::new(&php);
    // 1000 junk fields, then the action REDCap would never see.
    let body = format!(
        "{}&content=user&action=delete&users[]=alice",
        (0..1000)
            .map(|i| format!("j{i}=1"))
            .collect::<Vec<_>>()
            .join("&")
    );
    let php_view = oracle.urlencoded(body.as_bytes()).await;
    assert!(!php_view.contains(&hex(b"action")), "PHP drops the action");
    assert!(parse_urlencoded(body.as_bytes(), PhpLimits::default()).is_err());
    let deep = format!("users{}=alice", "[x]".repeat(65));
    let php_view = oracle.urlencoded(deep.as_bytes()).await;
    assert_eq!(
        php_view,
        json!(["a", []]).to_string(),
        "PHP drops a variable nested too deep"
    );
    assert!(parse_urlencoded(deep.as_bytes(), PhpLimits::default()).is_err());
}

#[tokio::test]
async fn multipart_fields_agree_with_php() {
    let Some(php) = start_php().await else { return };
    let oracle = Oracle::new(&php);
    let names: &[&[&str]] = &[
        &["content", "action", "record"],
        &["users[]", "users[]", "content"],
        &["users[1]", "users[0]", "x[a][b]", "x[a][]"],
        &["content", "content"],
        &["a[b", "c]", "d[e]f"],
    ];
    for set in names {
        let boundary = "XyZ";
        let mut body = Vec::new();
        for (i, n) in set.iter().enumerate() {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\nv{i}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\r\nhello\r\n--{boundary}--\r\n").as_bytes());
        let (php_post, php_files) = oracle
            .read(
                &format!("multipart/form-data; boundary={boundary}"),
                body.clone(),
            )
            .await;
        let stream =
            futures_util::stream::iter(vec![Ok::<_, redcap_gateway::BoxError>(Bytes::from(body))]);
        let limits = MultipartLimits {
            php: PhpLimits::default(),
            max_body: 1 << 20,
            max_field: 1 << 16,
        };
        let ours = read_multipart(stream, boundary.into(), limits)
            .await
            .expect("accepted");
        assert_eq!(enc_array(&ours.form.post).to_string(), php_post, "{set:?}");
        assert_eq!(
            php_files,
            json!([[hex(b"file"), hex(b"f.txt"), 5]]),
            "{set:?}"
        );
    }
}
