//! Writes a full-path gateway config for the benchmark (RS256 JWT issuer with a JWKS
//! file, grants, user rules, rate limits set high, audit to a file, metrics) and prints
//! three JWTs for it, a line each: the full-rights group, the de-identified one, and one
//! scoped to data access group site_a.
//! Usage: bench_setup DIR UPSTREAM_URL LISTEN ADMIN_LISTEN

use redcap_gateway::dev::DevIssuer;
use redcap_gateway::secret::random_redcap_token;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [dir, upstream, listen, admin] =
        <[String; 4]>::try_from(a).expect("bench_setup DIR UPSTREAM_URL LISTEN ADMIN");
    let dir = std::path::Path::new(&dir);
    let issuer = DevIssuer::new_rsa("https://sso.bench.invalid", "bench-key").expect("key");
    std::fs::write(
        dir.join("jwks.json"),
        serde_json::to_string(issuer.jwks()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("token"), random_redcap_token().expose()).unwrap();
    let config = format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"
log_format = "json"

[limits]
max_concurrent_requests = 4096

[upstream]
url = "{upstream}"
pool_max_idle_per_host = 256

[[auth.issuers]]
issuer = "https://sso.bench.invalid"
jwks_file = "{dir}/jwks.json"
audiences = ["redcap-gateway"]
algorithms = ["RS256"]
groups_claim = "groups"

[audit]
sink = "file"
path = "{dir}/audit.log"
max_bytes = "1GiB"

[rate_limit]
per_user = {{ limit = 10000000, per = "1s" }}
per_project = {{ limit = 10000000, per = "1s" }}
upstream = {{ limit = 10000000, per = "1s" }}

[projects.bench]
token = "file:{dir}/token"
token_owner = "svc_owner"

[[projects.bench.grants]]
groups = ["bench"]
allow = ["read", "user:*"]
export = "full"

[[projects.bench.grants]]
groups = ["bench_deid"]
allow = ["read"]
export = "deidentified"

[[projects.bench.grants]]
groups = ["bench_site"]
allow = ["read"]
export = "full"
dags = ["site_a"]

[projects.bench.user_rules]
assignable_dags = ["site_a", "site_b"]
expiration_max_days = 3650
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    println!("{}", issuer.token("bench-user", &["bench"]));
    println!("{}", issuer.token("bench-analyst", &["bench_deid"]));
    println!("{}", issuer.token("bench-site", &["bench_site"]));
}
