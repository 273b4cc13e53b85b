//! Dev mode and test fixtures: a local JWT issuer and a gateway in front of the fake
//! REDCap, configured through the same config loader as production.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::jwt::{Issuer, JwksSource};
use crate::config::{Config, IssuerConfig};
use crate::fake_redcap::{FakeProject, FakeRedcap};
use crate::secret::Secret;
use crate::server::Gateway;

pub const DEV_ISSUER: &str = "https://dev-issuer.redcap-gateway.invalid";
pub const DEV_AUDIENCE: &str = "redcap-gateway";
pub const DEV_GROUP: &str = "redcap-dev";
pub const DEV_PROJECT: &str = "demo";
pub const DEV_KID: &str = "dev-key-1";

/// A local issuer of Ed25519-signed JWTs, with its JWKS.
pub struct DevIssuer {
    pub issuer: String,
    key: EncodingKey,
    jwks: JwkSet,
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
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwks,
        })
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

    /// A signed token with the given claims merged over sensible defaults.
    pub fn token_with(&self, extra: serde_json::Value) -> String {
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
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(DEV_KID.into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default()
    }

    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        self.token_with(
            serde_json::json!({"preferred_username": user, "sub": user, "groups": groups}),
        )
    }
}

/// A fresh random REDCap-shaped token (32 upper-case hex characters).
pub fn random_redcap_token() -> Secret {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut b);
    Secret::new(b.iter().map(|x| format!("{x:02X}")).collect())
}

/// The dev-mode config text: one demo project, grants for the dev group.
pub fn dev_config_text(listen: &str, upstream: &str, token_file: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace = "5s"

[upstream]
url = "{upstream}"

[vault]
reload_interval = "2s"

[projects.{DEV_PROJECT}]
token = "file:{token_file}"
token_owner = "redcap_owner"

[[projects.{DEV_PROJECT}.grants]]
groups = ["{DEV_GROUP}"]
allow = ["read", "record:import", "user:*", "userDagMapping:*", "userRole:export", "userRoleMapping:export", "file:*"]
"#
    )
}

/// A gateway in front of a fake REDCap with one demo project: dev mode and tests.
pub struct DevEnv {
    pub fake: FakeRedcap,
    pub issuer: DevIssuer,
    pub project_token: Secret,
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
}

impl DevEnv {
    /// Starts the fake REDCap and builds the gateway; `edit` may change the config text.
    pub async fn start(
        listen: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<DevEnv, String> {
        let fake = FakeRedcap::start().await.map_err(|e| e.to_string())?;
        let project_token = random_redcap_token();
        fake.add_project(project_token.expose(), FakeProject::demo(1, "redcap_owner"));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let token_file = dir.path().join("demo.token");
        std::fs::write(&token_file, project_token.expose()).map_err(|e| e.to_string())?;
        let text = edit(dev_config_text(
            listen,
            &fake.url(),
            &token_file.display().to_string(),
        ));
        let config =
            Config::from_toml(&text, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
        let issuer = DevIssuer::new(DEV_ISSUER)?;
        let gateway = Gateway::build(config, vec![issuer.gateway_issuer()?])
            .await
            .map_err(|e| e.join("\n"))?;
        Ok(DevEnv {
            fake,
            issuer,
            project_token,
            gateway: Arc::new(gateway),
            dir,
        })
    }
}

/// What dev mode prints: a token and two snippets that work as they are.
pub fn banner(url: &str, jwt: &str) -> String {
    let api = format!("{url}/p/{DEV_PROJECT}/api/");
    format!(
        "\nredcap-gateway dev mode: a fake REDCap with project '{DEV_PROJECT}' is behind {api}\n\n\
         A JWT for user 'dev-user' (group '{DEV_GROUP}'), valid 12 hours:\n\n{jwt}\n\n\
         curl:\n\n  curl -s -H 'Authorization: Bearer {jwt}' \\\n    -d content=record -d format=json -d returnFormat=json {api}\n\n\
         PyCap 2.7.0 (pip install PyCap==2.7.0):\n\n  python3 -c 'from redcap import Project; \
         p = Project(\"{api}\", \"0\"*32, headers={{\"Authorization\": \"Bearer {jwt}\"}}); print(p.export_records())'\n\n\
         Ctrl-C stops it.\n",
    )
}

/// Waits this long at most for a dev request loop; used by tests.
pub const DEV_WAIT: Duration = Duration::from_secs(10);
