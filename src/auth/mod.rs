//! SMART Backend Services: the gateway is its own authorization server (SMART App Launch
//! 2.2.0, "client-confidential-asymmetric"; RFC 7521/7523 JWT client assertions).
//!
//! - [`keys`]: ES384/RS384 key pairs, PEM and JWK, `keys generate`.
//! - [`scopes`]: `system/` scopes in the v1 and v2 syntaxes and what they allow.
//! - [`narrow`]: scopes narrowed by search parameters, applied to searches, reads and writes.
//! - `token`: the token endpoint (client assertion checks, replay store, scope grant) and
//!   the gateway's access tokens (signed with its own keys, kept in the database).
//! - `http`: the routes (discovery, token, the gateway's JWKS, the admin API) and
//!   [`enforce`], the middleware that authenticates every FHIR request and checks its
//!   scopes per interaction.
//! - [`clients`]: the `clients` and `keys` commands and the demo client of a fresh start.
//! - [`tenancy`]: the site label on writes and what a site client may see.
//!
//! The authenticated caller of a request is a [`Principal`]: in the request's extensions,
//! and, for code that has no request at hand (the ledger), as [`current`] while the request
//! is being handled.

pub mod clients;
mod http;
pub mod keys;
pub mod narrow;
pub mod scopes;
pub mod tenancy;
mod token;

pub use http::{enforce, routes, smart_configuration_json, NoAuth};
pub use token::{Auth, OAuthError, TokenRequest, ASSERTION_TYPE};

use scopes::Scopes;

/// What a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A hospital: writes and reads its own site's data.
    Site,
    /// The sponsor: reads across sites.
    Sponsor,
    /// Manages clients and the ledger.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Site => "site",
            Role::Sponsor => "sponsor",
            Role::Admin => "admin",
        }
    }

    /// The role of a stored name.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "site" => Some(Role::Site),
            "sponsor" => Some(Role::Sponsor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Authentication settings of the server.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `--no-auth`: every request is an admin of site `local` (loopback listeners only).
    pub disabled: bool,
    /// The public base URL of the server (`https://gateway.example.org`), the `aud` of
    /// client assertions and the `iss` of access tokens; `http://` plus the listening
    /// address when not given.
    pub public_url: Option<String>,
    /// Lifetime of access tokens, in seconds.
    pub token_lifetime: u64,
    /// PEM certificates of a private CA to trust, besides the system's roots, when
    /// fetching clients' JWKS URLs over HTTPS.
    pub jwks_ca_cert: Option<std::path::PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            disabled: false,
            public_url: None,
            token_lifetime: 300,
            jwks_ca_cert: None,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The client id.
    pub client_id: String,
    /// Its site.
    pub site: String,
    /// Its role.
    pub role: Role,
    /// What its token grants.
    pub scopes: Scopes,
}

impl Principal {
    /// The caller of every request under `--no-auth`: an admin of site `local` with every
    /// scope.
    pub fn local() -> Principal {
        Principal {
            client_id: "local".into(),
            site: "local".into(),
            role: Role::Admin,
            scopes: Scopes::parse("system/*.cruds").unwrap_or_default(),
        }
    }
}

tokio::task_local! {
    static CURRENT: Principal;
}

/// The caller of the request being handled on this task, if [`enforce`] authenticated one.
pub fn current() -> Option<Principal> {
    CURRENT.try_with(Principal::clone).ok()
}

/// Runs `f` with `p` as [`current`].
pub(crate) async fn with_principal<F: std::future::Future>(p: Principal, f: F) -> F::Output {
    CURRENT.scope(p, f).await
}

/// Runs the blocking `f` with `p` (a principal taken with [`current`] on the request's
/// task) as [`current`]: work moved to a blocking thread keeps the caller it acts for.
pub(crate) fn blocking_as<R>(p: Option<Principal>, f: impl FnOnce() -> R) -> R {
    match p {
        Some(p) => CURRENT.sync_scope(p, f),
        None => f(),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The CapabilityStatement's `rest.security` (JSON text): the SMART-on-FHIR service and the
/// `oauth-uris` extension naming the token endpoint.
pub fn capability_security(auth: &Auth) -> String {
    serde_json::json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{ "url": "token", "valueUri": auth.token_url() }],
        }],
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }],
            "text": "SMART Backend Services (client-confidential-asymmetric)",
        }],
        "description": "SMART Backend Services: client_credentials with a private_key_jwt client assertion (RS384 or ES384), system/ scopes in the v1 and v2 syntaxes; see /.well-known/smart-configuration.",
    })
    .to_string()
}
