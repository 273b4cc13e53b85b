//! Dev mode and test fixtures: a local JWT issuer and a gateway in front of the fake
//! REDCap, configured through the same config loader as production; in dev mode also a
//! local sign-in service (`idp.rs`) for the portal.

pub mod idp;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::jwt::{Issuer, JwksSource};
use crate::config::IssuerConfig;
use crate::fake_redcap::{FakeProject, FakeRedcap};
use crate::gateway::Gateway;
use crate::secret::Secret;

pub const DEV_ISSUER: &str = "https://dev-issuer.redcap-gateway.invalid";
pub const DEV_AUDIENCE: &str = "redcap-gateway";
pub const DEV_GROUP: &str = "redcap-dev";
/// The demo group scoped to data access group `site_a`.
pub const DEV_SITE_GROUP: &str = "redcap-site-a";
/// The demo group with De-Identified export rights.
pub const DEV_DEID_GROUP: &str = "redcap-analysts";
pub const DEV_PROJECT: &str = "demo";
pub const DEV_KID: &str = "dev-key-1";

/// A local issuer of signed JWTs (Ed25519 by default, RS256 for IdP-like tests).
pub struct DevIssuer {
    pub issuer: String,
    pub kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwks: JwkSet,
    /// For RSA issuers: the public key as PEM (what an HS256-confusion attacker uses).
    pub public_pem: Option<String>,
}

impl DevIssuer {
    pub fn new(issuer: &str) -> Result<DevIssuer, String> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({
            "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": DEV_KID, "alg": "EdDSA", "use": "sig"}]
        }))
        .map_err(|e| e.to_string())?;
        Ok(DevIssuer {
            issuer: issuer.to_string(),
            kid: DEV_KID.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwks,
            public_pem: None,
        })
    }

    /// An RS256 issuer with a fresh 2048-bit key under `kid`.
    pub fn new_rsa(issuer: &str, kid: &str) -> Result<DevIssuer, String> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| e.to_string())?;
        let pkcs8: Pkcs8V1Der = pair.as_der().map_err(|e| e.to_string())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = |label: &str, der: &[u8]| {
            let body = b64.encode(der);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let key = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            .map_err(|e| e.to_string())?;
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair);
        let spki: PublicKeyX509Der = public.as_der().map_err(|e| e.to_string())?;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = url.encode(public.modulus().big_endian_without_leading_zero());
        let e = url.encode(public.exponent().big_endian_without_leading_zero());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({
            "keys": [{"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"}]
        }))
        .map_err(|e| e.to_string())?;
        Ok(DevIssuer {
            issuer: issuer.to_string(),
            kid: kid.into(),
            alg: Algorithm::RS256,
            key,
            jwks,
            public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
        })
    }

    /// Signs arbitrary claims with this issuer's key under an arbitrary header.
    pub fn sign(&self, header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).unwrap_or_default()
    }

    /// The default claims (for building attack tokens).
    pub fn claims(&self, extra: serde_json::Value) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": DEV_AUDIENCE,
            "sub": "dev-user",
            "preferred_username": "dev-user",
            "groups": [DEV_GROUP],
            "iat": now,
            "nbf": now,
            "exp": now + 12 * 3600,
        });
        if let (Some(base), serde_json::Value::Object(more)) = (claims.as_object_mut(), extra) {
            for (k, v) in more {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    base.insert(k, v);
                }
            }
        }
        claims
    }

    /// The header this issuer signs with.
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// The issuer's config, as an operator would write it.
    pub fn config(&self) -> IssuerConfig {
        let text = format!(
            "issuer = {:?}\njwks_file = \"/unused\"\naudiences = [{DEV_AUDIENCE:?}]\nalgorithms = [\"EdDSA\"]\ngroups_claim = \"groups\"\n",
            self.issuer
        );
        toml::from_str(&text).expect("static dev issuer config parses")
    }

    /// The issuer for the gateway, with keys in memory.
    pub fn gateway_issuer(&self) -> Result<Issuer, String> {
        Issuer::with_source(&self.config(), JwksSource::Static(self.jwks.clone()), None)
    }

    /// A signed token with the given claims merged over sensible defaults
    /// (a `null` removes a claim).
    pub fn token_with(&self, extra: serde_json::Value) -> String {
        self.sign(&self.header(), &self.claims(extra))
    }

    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        self.token_with(
            serde_json::json!({"preferred_username": user, "sub": user, "groups": groups}),
        )
    }
}

/// The dev-mode config text: one demo project, grants for the dev group.
pub fn dev_config_text(listen: &str, upstream: &str, token_file: &str, audit_file: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace = "5s"

[upstream]
url = "{upstream}"

[vault]
reload_interval = "2s"

[audit]
sink = "file"
path = "{audit_file}"

[projects.{DEV_PROJECT}]
token = "file:{token_file}"
token_owner = "redcap_owner"

[[projects.{DEV_PROJECT}.grants]]
groups = ["{DEV_GROUP}"]
allow = ["read", "record:import", "user:*", "userDagMapping:*", "userRole:export", "userRoleMapping:*", "file:*"]
export = "full"

# Site A's staff: full records, but only Site A's (data access group site_a).
[[projects.{DEV_PROJECT}.grants]]
groups = ["{DEV_SITE_GROUP}"]
allow = ["read", "record:import", "record:delete"]
export = "full"
dags = ["site_a"]

# Analysts: records without identifiers, free text, notes or dates (REDCap's De-Identified).
[[projects.{DEV_PROJECT}.grants]]
groups = ["{DEV_DEID_GROUP}"]
allow = ["read"]
export = "deidentified"

[projects.{DEV_PROJECT}.user_rules]
username_pattern = "[a-z][a-z0-9_]{{1,31}}"
protected_users = ["alice_admin"]
expiration_max_days = 730
assignable_dags = ["site_a", "site_b"]
allow_all_dags = true
assignable_roles = ["U-527D39JXAC"]
max_users_per_delete = 5

[projects.{DEV_PROJECT}.user_rules.ceilings]
user_rights = 0
design = 0
data_access_groups = 0
api_import = 0
record_delete = 0
lock_records = 1
forms = "view-edit"
forms_export = "deidentified"
"#
    )
}

/// The dev config's file name in the dev directory.
pub const CONFIG_FILE: &str = "gateway.toml";

/// A gateway in front of a fake REDCap with one demo project: dev mode and tests.
pub struct DevEnv {
    pub fake: FakeRedcap,
    pub issuer: DevIssuer,
    pub project_token: Secret,
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    /// Dev mode's sign-in service, when the portal is on.
    pub idp: Option<idp::DevIdp>,
}

impl DevEnv {
    /// The config file the gateway was built from (and reloads).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// Starts the fake REDCap and builds the gateway; `edit` may change the config text.
    pub async fn start(
        listen: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<DevEnv, String> {
        let fake = FakeRedcap::start().await.map_err(|e| e.to_string())?;
        let project_token = crate::secret::random_redcap_token();
        fake.add_project(project_token.expose(), FakeProject::demo(1, "redcap_owner"));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let token_file = dir.path().join("demo.token");
        std::fs::write(&token_file, project_token.expose()).map_err(|e| e.to_string())?;
        let audit_file = dir.path().join("audit.log");
        let text = edit(dev_config_text(
            listen,
            &fake.url(),
            &token_file.display().to_string(),
            &audit_file.display().to_string(),
        ));
        let config = crate::gateway::config_from_toml(&text, &|k| std::env::var(k).ok())
            .map_err(|e| e.to_string())?;
        // On disk too, so dev mode reloads it when edited, as `serve` does.
        std::fs::write(dir.path().join(CONFIG_FILE), &text).map_err(|e| e.to_string())?;
        let issuer = DevIssuer::new(DEV_ISSUER)?;
        let gateway = Gateway::build(config, vec![issuer.gateway_issuer()?])
            .await
            .map_err(|e| e.join("\n"))?;
        // The gateway's own start-up calls (project metadata), so tests see only what
        // their clients' requests caused.
        fake.clear_requests();
        Ok(DevEnv {
            fake,
            issuer,
            project_token,
            gateway: Arc::new(gateway),
            dir,
            idp: None,
        })
    }

    /// Dev mode: `start`, plus the sign-in portal at `http://{listen}/portal/` with a
    /// local sign-in service, and self-service personal tokens.
    pub async fn start_with_portal(listen: &str) -> Result<DevEnv, String> {
        let public = format!("http://{listen}");
        let secrets = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client_secret = crate::secret::random_redcap_token();
        let idp = idp::DevIdp::start(&format!("{public}/portal/callback"), client_secret.expose())
            .await?;
        let write = |name: &str, value: &str| -> Result<String, String> {
            let path = secrets.path().join(name);
            std::fs::write(&path, value).map_err(|e| e.to_string())?;
            Ok(path.display().to_string())
        };
        let secret_file = write("portal-client-secret", client_secret.expose())?;
        let cookie_key = crate::secret::random_redcap_token();
        let key_file = write("portal-cookie-key", &cookie_key.expose().repeat(2))?;
        let hmac = crate::secret::random_redcap_token();
        let tokens = secrets.path().join("personal-tokens.json");
        let section = format!(
            "{}\n[personal_tokens]\nfile = \"{}\"\nkey = \"{}\"\nself_service = true\n\n\
             [portal]\npublic_url = \"{public}\"\nissuer = \"{}\"\nclient_id = \"{}\"\n\
             client_secret = \"file:{secret_file}\"\ncookie_key = \"file:{key_file}\"\n",
            idp.issuer_config(),
            tokens.display(),
            hmac.expose(),
            idp.issuer,
            idp::DEV_CLIENT_ID,
        );
        let mut env = Self::start(listen, |t| {
            t.replacen("\n[projects.", &format!("{section}\n[projects."), 1)
        })
        .await?;
        env.idp = Some(idp);
        // Kept as long as the environment: the files the config names.
        std::mem::forget(secrets);
        Ok(env)
    }
}

/// What dev mode prints: a token and two snippets that work as they are.
pub fn banner(url: &str, jwt: &str, audit: &str, config: &str) -> String {
    let api = format!("{url}/p/{DEV_PROJECT}/api/");
    format!(
        "\nredcap-gateway dev mode: a fake REDCap with project '{DEV_PROJECT}' is behind {api}\n\n\
         A JWT for user 'dev-user' (group '{DEV_GROUP}'), valid 12 hours:\n\n{jwt}\n\n\
         curl:\n\n  curl -s -H 'Authorization: Bearer {jwt}' \\\n    -d content=record -d format=json -d returnFormat=json {api}\n\n\
         PyCap 2.7.0 (pip install PyCap==2.7.0):\n\n  python3 -c 'from redcap import Project; \
         p = Project(\"{api}\", \"0\"*32, headers={{\"Authorization\": \"Bearer {jwt}\"}}); print(p.export_records())'\n\n\
         The audit log is {audit} (check it: redcap-gateway verify-audit {audit}).\n\
         The config is {config}: edit it and the gateway reloads it (or send SIGHUP).\n\
         Ctrl-C stops it.\n",
    )
}

/// What dev mode prints for the portal: sign in, create a token, use it.
pub fn portal_banner(url: &str) -> String {
    let api = format!("{url}/p/{DEV_PROJECT}/api/");
    format!(
        "The sign-in portal: open {url}/portal/ in a browser, sign in (dev sign-in: pick a user),\n\
         open project '{DEV_PROJECT}' and create a token. Then, with TOKEN the token it shows:\n\n\
         \x20 curl -s -d token=TOKEN -d content=record -d format=json -d returnFormat=json {api}\n\n\
         \x20 python3 -c 'from redcap import Project; p = Project(\"{api}\", \"TOKEN\"); print(p.export_records())'\n"
    )
}

/// What dev mode prints for the de-identified demo group (the same export, narrowed)
/// and for the site A group (only site A's records).
pub fn analyst_banner(url: &str, jwt: &str, site_jwt: &str) -> String {
    let api = format!("{url}/p/{DEV_PROJECT}/api/");
    format!(
        "A JWT for user 'dev-analyst' (group '{DEV_DEID_GROUP}', De-Identified export rights):\n\n{jwt}\n\n\
         The same export without names, dates of birth or notes:\n\n  curl -s -H 'Authorization: Bearer {jwt}' \\\n    -d content=record -d format=json -d returnFormat=json {api}\n\n\
         A JWT for user 'dev-site-a' (group '{DEV_SITE_GROUP}', data access group site_a only):\n\n{site_jwt}\n\n\
         The same export with site A's records only:\n\n  curl -s -H 'Authorization: Bearer {site_jwt}' \\\n    -d content=record -d format=json -d returnFormat=json {api}\n"
    )
}
