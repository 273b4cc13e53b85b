//! Who is calling: credentials in, a `Principal` out.

pub mod jwt;
pub mod personal;

use std::fmt;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// An SSO (OIDC) or Kubernetes service-account JWT.
    Jwt,
    /// A gateway-issued personal token sent in REDCap's `token` field.
    PersonalToken,
    /// A sign-in portal session (an OIDC ID token verified at sign-in).
    Session,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::PersonalToken => "personal_token",
            CredentialKind::Session => "portal_session",
        }
    }
}

/// The authenticated caller, as policy and audit see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    /// Groups, already prefixed with the issuer's `group_prefix`.
    pub groups: Vec<String>,
    pub issuer: String,
    pub credential: CredentialKind,
}

/// Why a credential was refused. The text goes to the client: it names the problem,
/// never the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send an SSO token as 'Authorization: Bearer <JWT>', or a personal gateway token in the token field")]
    Missing,
    #[error("the Authorization header must use the Bearer scheme")]
    BadScheme,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    /// Never one of two picked: a proxy in front might have read the other.
    #[error("more than one Authorization header: send one")]
    Duplicate,
    #[error("the bearer token is too large")]
    TooLarge,
    #[error("the token's issuer is not trusted by this gateway")]
    UnknownIssuer,
    #[error("the token's signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token's signing key is not known")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this gateway (audience)")]
    WrongAudience,
    #[error("the token's issuer does not match")]
    WrongIssuer,
    #[error("the token lacks the claim {0:?} that names the user")]
    MissingUser(String),
    #[error("the token is invalid")]
    Invalid,
    #[error("the issuer's signing keys are not available")]
    KeysUnavailable,
    #[error("the token is not a valid gateway token")]
    UnknownToken,
    #[error("the token is not valid for this project")]
    WrongProject,
    #[error("the sign-in's ID token does not carry the nonce this sign-in sent")]
    WrongNonce,
}

impl AuthError {
    /// A bounded label for metrics and audit.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadScheme => "bad_scheme",
            AuthError::Malformed => "malformed",
            AuthError::Duplicate => "duplicate",
            AuthError::TooLarge => "too_large",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "audience",
            AuthError::WrongIssuer => "issuer",
            AuthError::MissingUser(_) => "missing_user",
            AuthError::Invalid => "invalid",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::UnknownToken => "unknown_token",
            AuthError::WrongProject => "wrong_project",
            AuthError::WrongNonce => "nonce",
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.user, self.issuer)
    }
}
