//! The token endpoint's logic and the gateway's access tokens.
//!
//! A client proves who it is with a JWT it signed (RFC 7523 §2.2, SMART Backend Services):
//! `iss` = `sub` = its id, `aud` = the token URL, `exp` at most five minutes ahead, a `jti`
//! used once (kept in the database until the assertion expires, so every replica refuses a
//! replay), header `kid` naming a key of its registered JWKS and `alg` RS384 or ES384. The
//! gateway answers with an access token: a JWT it signs with its own key (ES384, made on
//! first use and kept in the database; rotation keeps old public keys until their tokens
//! have expired), carrying the client, its site and role and the granted scopes.

use super::keys::{decoding_key, Alg, KeyError, SigningKey};
use super::scopes::Scopes;
use super::{unix_now, AuthConfig, Principal, Role};
use crate::store::auth::GatewayKeyRow;
use crate::store::{Store, StoreError};
use jsonwebtoken::errors::ErrorKind;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The `client_assertion_type` of JWT client authentication (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead a client assertion's `exp` may be (SMART: no more than five minutes).
const MAX_ASSERTION_AHEAD: i64 = 300;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY: u64 = 30;

/// How many verified access tokens [`Auth`] remembers (a few per client in practice).
const MAX_VERIFIED: usize = 10_000;

/// An OAuth 2.0 error answer (RFC 6749 §5.2).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// Missing or malformed parameters.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// The client could not be authenticated.
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// The scope is malformed or not granted to the client.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// Not `client_credentials`.
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    /// The database or a key failed.
    #[error("server_error: {0}")]
    Server(String),
}

impl OAuthError {
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::Server(_) => "server_error",
        }
    }

    /// The `error_description`.
    pub fn description(&self) -> &str {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidClient(d)
            | OAuthError::InvalidScope(d)
            | OAuthError::UnsupportedGrantType(d)
            | OAuthError::Server(d) => d,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::Server(e.to_string())
    }
}

/// The parameters of a token request.
#[derive(Debug, Default, Clone)]
pub struct TokenRequest {
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `client_assertion_type`.
    pub client_assertion_type: Option<String>,
    /// `client_assertion`.
    pub client_assertion: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `client_id`, when the client sends it too.
    pub client_id: Option<String>,
}

/// A JWKS fetched from a client's URL, until its `max-age` runs out.
struct CachedJwks {
    jwks: Value,
    fetched: Instant,
    fresh_for: Duration,
}

/// The authorization server: shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: AuthConfig,
    base: OnceLock<String>,
    /// The gateway's keys as last read from the database (newest first).
    keys: tokio::sync::RwLock<Vec<(SigningKey, Option<i64>)>>,
    jwks: tokio::sync::Mutex<HashMap<String, CachedJwks>>,
    http: reqwest::Client,
    /// The claims of access tokens whose signature, issuer and audience were verified, by
    /// the token's text, until it expires: an ES384 signature check costs over a
    /// millisecond of CPU and a client sends its token for minutes. The client is still
    /// looked up on every request.
    verified: std::sync::Mutex<HashMap<String, Value>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The authorization server over `store`.
    pub fn new(store: Store, config: AuthConfig) -> Auth {
        let base = OnceLock::new();
        if let Some(url) = &config.public_url {
            let _ = base.set(url.trim_end_matches('/').to_string());
        }
        // `serve` checks the CA file before it starts; should it fail here after all, only
        // the system's roots are trusted (a private CA's JWKS URLs then fail, closed).
        let http =
            crate::client::http_client(config.jwks_ca_cert.as_deref(), Duration::from_secs(10))
                .or_else(|e| {
                    tracing::error!(error = %e, "JWKS fetching: the CA file cannot be used");
                    crate::client::http_client(None, Duration::from_secs(10))
                })
                .unwrap_or_default();
        Auth {
            inner: Arc::new(Inner {
                store,
                config,
                base,
                keys: tokio::sync::RwLock::new(Vec::new()),
                jwks: tokio::sync::Mutex::new(HashMap::new()),
                http,
                verified: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Records the address the server listens on, the base URL when no public URL was
    /// configured.
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.inner.base.set(format!("http://{addr}"));
    }

    /// The public base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        self.inner
            .base
            .get()
            .map_or("http://127.0.0.1:8080", String::as_str)
    }

    /// The token endpoint's URL: the `aud` client assertions must carry.
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.base_url())
    }

    /// The FHIR base URL: the `aud` of access tokens.
    pub fn fhir_url(&self) -> String {
        format!("{}/fhir", self.base_url())
    }

    /// Reads the gateway's keys from the database into the cache.
    async fn reload_keys(&self) -> Result<(), OAuthError> {
        let rows = self.inner.store.gateway_keys().await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let key = SigningKey::from_pem(&row.private_pem)
                .map_err(|e| OAuthError::Server(format!("gateway key {}: {e}", row.kid)))?;
            keys.push((key, row.retired));
        }
        *self.inner.keys.write().await = keys;
        Ok(())
    }

    /// The key that signs new access tokens, made and stored on first use.
    ///
    /// # Errors
    /// When the database or key generation fails.
    pub async fn signing_key(&self) -> Result<SigningKey, OAuthError> {
        if let Some((k, _)) = self
            .inner
            .keys
            .read()
            .await
            .iter()
            .find(|(_, r)| r.is_none())
        {
            return Ok(k.clone());
        }
        self.reload_keys().await?;
        if let Some((k, _)) = self
            .inner
            .keys
            .read()
            .await
            .iter()
            .find(|(_, r)| r.is_none())
        {
            return Ok(k.clone());
        }
        let key =
            SigningKey::generate(Alg::Es384).map_err(|e| OAuthError::Server(e.to_string()))?;
        self.inner
            .store
            .add_gateway_key(&key_row(&key), false)
            .await?;
        self.reload_keys().await?;
        self.inner
            .keys
            .read()
            .await
            .iter()
            .find(|(_, r)| r.is_none())
            .map(|(k, _)| k.clone())
            .ok_or_else(|| OAuthError::Server("no gateway signing key".into()))
    }

    /// Makes a new signing key and retires the current one (its public key stays for
    /// verification until the tokens it signed have expired). Returns the new key id.
    ///
    /// # Errors
    /// When the database or key generation fails.
    pub async fn rotate(&self) -> Result<String, OAuthError> {
        let key =
            SigningKey::generate(Alg::Es384).map_err(|e| OAuthError::Server(e.to_string()))?;
        self.inner
            .store
            .add_gateway_key(&key_row(&key), true)
            .await?;
        let lifetime = i64::try_from(self.inner.config.token_lifetime).unwrap_or(i64::MAX);
        self.inner
            .store
            .prune_gateway_keys(unix_now().saturating_sub(lifetime + 2 * LEEWAY as i64))
            .await?;
        self.reload_keys().await?;
        Ok(key.kid)
    }

    /// The gateway's public keys still in use (current and recently retired), as a JWKS.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn public_jwks(&self) -> Result<Value, OAuthError> {
        self.signing_key().await?;
        let keys: Vec<Value> = self
            .inner
            .keys
            .read()
            .await
            .iter()
            .map(|(k, _)| k.public_jwk.clone())
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Handles a token request: authenticates the client by its assertion, grants scopes
    /// and returns the token response JSON.
    ///
    /// # Errors
    /// The OAuth error to answer.
    pub async fn token(&self, req: &TokenRequest) -> Result<Value, OAuthError> {
        match req.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::UnsupportedGrantType(format!(
                    "grant_type {other} is not supported; use client_credentials"
                )))
            }
            None => return Err(OAuthError::InvalidRequest("grant_type is missing".into())),
        }
        match req.client_assertion_type.as_deref() {
            Some(ASSERTION_TYPE) => {}
            Some(other) => {
                return Err(OAuthError::InvalidClient(format!(
                    "client_assertion_type {other} is not supported; use {ASSERTION_TYPE}"
                )))
            }
            None => {
                return Err(OAuthError::InvalidRequest(
                    "client_assertion_type is missing".into(),
                ))
            }
        }
        let assertion = req
            .client_assertion
            .as_deref()
            .ok_or_else(|| OAuthError::InvalidRequest("client_assertion is missing".into()))?;
        let scope = req
            .scope
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| OAuthError::InvalidRequest("scope is missing".into()))?;
        let client = self
            .authenticate(assertion, req.client_id.as_deref())
            .await?;
        let requested =
            Scopes::parse(scope).map_err(|e| OAuthError::InvalidScope(e.to_string()))?;
        super::narrow::check(&requested).map_err(|e| OAuthError::InvalidScope(e.to_string()))?;
        let allowed = Scopes::parse(&client.scope)
            .map_err(|e| OAuthError::Server(format!("client {}: {e}", client.id)))?;
        let granted = allowed.grant(&requested).map_err(|s| {
            OAuthError::InvalidScope(format!("scope {s} is not granted to client {}", client.id))
        })?;
        let key = self.signing_key().await?;
        let now = unix_now();
        let lifetime = i64::try_from(self.inner.config.token_lifetime).unwrap_or(300);
        let claims = json!({
            "iss": self.base_url(),
            "sub": client.id,
            "aud": self.fhir_url(),
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid::Uuid::new_v4().to_string(),
            "scope": granted.to_string(),
            "site": client.site,
            "role": client.role,
        });
        let token = key
            .sign(&claims, "at+jwt")
            .map_err(|e| OAuthError::Server(e.to_string()))?;
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": granted.to_string(),
        }))
    }

    /// Checks a client assertion; returns the registered client it proves.
    async fn authenticate(
        &self,
        assertion: &str,
        client_id: Option<&str>,
    ) -> Result<crate::store::auth::ClientRow, OAuthError> {
        let bad = |m: String| OAuthError::InvalidClient(m);
        // The header parse fails for algorithms jsonwebtoken does not know, `none` among them.
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| bad(format!("client_assertion header: {e}")))?;
        let alg = Alg::from_jwt(header.alg).ok_or_else(|| {
            bad(format!(
                "client_assertion alg {:?} is not accepted; use RS384 or ES384",
                header.alg
            ))
        })?;
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| bad("client_assertion header has no kid".into()))?;
        // Who claims to sign: read before verifying, only to find the key to verify with.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(assertion)
            .map_err(|e| bad(format!("client_assertion: {e}")))?
            .claims;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("client_assertion has no iss".into()))?;
        if client_id.is_some_and(|c| c != iss) {
            return Err(bad("client_id differs from the assertion's iss".into()));
        }
        let client = self
            .inner
            .store
            .client(iss)
            .await?
            .ok_or_else(|| bad(format!("unknown client {iss}")))?;
        if client.revoked.is_some() {
            return Err(bad(format!("client {iss} is revoked")));
        }
        if let Some(jku) = &header.jku {
            if client.jwks_url.as_deref() != Some(jku.as_str()) {
                return Err(bad("jku is not the client's registered JWKS URL".into()));
            }
        }
        let jwk = self.client_key(&client, kid).await?;
        let key = decoding_key(&jwk, alg).map_err(|e: KeyError| bad(e.to_string()))?;
        let mut validation = jsonwebtoken::Validation::new(alg.jwt());
        validation.set_audience(&[self.token_url()]);
        validation.set_issuer(&[&client.id]);
        validation.sub = Some(client.id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY;
        let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
            .map_err(|e| {
                bad(match e.kind() {
                    ErrorKind::InvalidSignature => {
                        "client_assertion signature does not verify".into()
                    }
                    ErrorKind::ExpiredSignature => "client_assertion has expired".into(),
                    ErrorKind::InvalidAudience => {
                        format!("client_assertion aud must be {}", self.token_url())
                    }
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
                        "client_assertion iss and sub must both be the client id".into()
                    }
                    ErrorKind::InvalidAlgorithm => {
                        "client_assertion alg does not match its key".into()
                    }
                    _ => format!("client_assertion: {e}"),
                })
            })?
            .claims;
        let now = unix_now();
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("client_assertion exp is not a number".into()))?;
        if exp > now + MAX_ASSERTION_AHEAD + LEEWAY as i64 {
            return Err(bad(
                "client_assertion exp is more than five minutes ahead".into()
            ));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("client_assertion has no jti".into()))?;
        if !self
            .inner
            .store
            .claim_jti(&client.id, jti, exp, now)
            .await?
        {
            return Err(bad("client_assertion jti was already used".into()));
        }
        Ok(client)
    }

    /// The client's public key `kid`, from its inline JWKS or its JWKS URL.
    async fn client_key(
        &self,
        client: &crate::store::auth::ClientRow,
        kid: &str,
    ) -> Result<Value, OAuthError> {
        let find = |jwks: &Value| {
            jwks.get("keys")
                .and_then(Value::as_array)
                .and_then(|keys| {
                    keys.iter()
                        .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
                })
                .cloned()
        };
        let unknown = || OAuthError::InvalidClient(format!("no key {kid} in the client's JWKS"));
        if let Some(inline) = &client.jwks {
            let jwks: Value = serde_json::from_str(inline)
                .map_err(|e| OAuthError::Server(format!("stored JWKS of {}: {e}", client.id)))?;
            return find(&jwks).ok_or_else(unknown);
        }
        let url = client
            .jwks_url
            .as_deref()
            .ok_or_else(|| OAuthError::Server(format!("client {} has no JWKS", client.id)))?;
        {
            let cache = self.inner.jwks.lock().await;
            if let Some(c) = cache.get(url) {
                if c.fetched.elapsed() < c.fresh_for {
                    if let Some(k) = find(&c.jwks) {
                        return Ok(k);
                    }
                    // An unknown kid may be a key added since: refetch, but not more
                    // than every ten seconds.
                    if c.fetched.elapsed() < Duration::from_secs(10) {
                        return Err(unknown());
                    }
                }
            }
        }
        let fetched = self.fetch_jwks(url).await?;
        let key = find(&fetched.jwks);
        self.inner
            .jwks
            .lock()
            .await
            .insert(url.to_string(), fetched);
        key.ok_or_else(unknown)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<CachedJwks, OAuthError> {
        let failed = |m: String| OAuthError::InvalidClient(format!("JWKS at {url}: {m}"));
        let resp = self
            .inner
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| failed(crate::client::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(failed(format!("status {}", resp.status())));
        }
        let fresh_for = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map_or(Duration::from_secs(300), max_age);
        let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
        let jwks: Value = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
        Ok(CachedJwks {
            jwks,
            fetched: Instant::now(),
            fresh_for,
        })
    }

    /// Checks an access token from an `Authorization: Bearer` header.
    ///
    /// # Errors
    /// Why it is not valid (for `WWW-Authenticate` and the OperationOutcome).
    pub async fn verify_access_token(&self, token: &str) -> Result<Principal, String> {
        let claims = match self.verified_claims(token) {
            Some(c) => c,
            None => {
                let claims = self.verify_signature(token).await?;
                self.remember(token, &claims);
                claims
            }
        };
        let s = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
        // A revoked client's tokens stop working at once, not when they expire.
        match self.inner.store.client(s("sub")).await {
            Ok(Some(c)) if c.revoked.is_none() => {}
            Ok(_) => return Err("the token's client is revoked or unknown".into()),
            Err(e) => return Err(format!("cannot check the token's client: {e}")),
        }
        let role = Role::from_name(s("role")).ok_or("token has no role")?;
        let scopes = Scopes::parse(s("scope")).map_err(|e| e.to_string())?;
        Ok(Principal {
            client_id: s("sub").to_string(),
            site: s("site").to_string(),
            role,
            scopes,
        })
    }

    /// Checks a token's signature (by a gateway key), `iss`, `aud` and `exp`; returns its
    /// claims.
    async fn verify_signature(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("token: {e}"))?;
        let kid = header.kid.ok_or("token has no kid")?;
        let mut key = self.find_gateway_key(&kid).await;
        if key.is_none() {
            // Made by another replica after a rotation: read the keys again.
            self.reload_keys().await.map_err(|e| e.to_string())?;
            key = self.find_gateway_key(&kid).await;
        }
        let key = key.ok_or("token was not signed by this gateway")?;
        if Alg::from_jwt(header.alg) != Some(key.alg) {
            return Err("token alg does not match the gateway key".into());
        }
        let dk = decoding_key(&key.public_jwk, key.alg).map_err(|e| e.to_string())?;
        let mut validation = jsonwebtoken::Validation::new(key.alg.jwt());
        validation.set_audience(&[self.fhir_url()]);
        validation.set_issuer(&[self.base_url()]);
        validation.leeway = 0;
        Ok(jsonwebtoken::decode::<Value>(token, &dk, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired".to_string(),
                _ => format!("token: {e}"),
            })?
            .claims)
    }

    /// The claims of a token verified before that has not expired since.
    fn verified_claims(&self, token: &str) -> Option<Value> {
        let mut cache = self.inner.verified.lock().ok()?;
        let claims = cache.get(token)?;
        if claims.get("exp").and_then(Value::as_i64)? > unix_now() {
            return Some(claims.clone());
        }
        cache.remove(token);
        None
    }

    /// Remembers a verified token's claims; when the cache is full, expired tokens are
    /// dropped first, and everything if that is not enough.
    fn remember(&self, token: &str, claims: &Value) {
        let Ok(mut cache) = self.inner.verified.lock() else {
            return;
        };
        if cache.len() >= MAX_VERIFIED {
            let now = unix_now();
            cache.retain(|_, c| {
                c.get("exp")
                    .and_then(Value::as_i64)
                    .is_some_and(|e| e > now)
            });
            if cache.len() >= MAX_VERIFIED {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), claims.clone());
    }

    async fn find_gateway_key(&self, kid: &str) -> Option<SigningKey> {
        self.inner
            .keys
            .read()
            .await
            .iter()
            .find(|(k, _)| k.kid == kid)
            .map(|(k, _)| k.clone())
    }

    /// The store (for the admin API).
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}

fn key_row(key: &SigningKey) -> GatewayKeyRow {
    GatewayKeyRow {
        kid: key.kid.clone(),
        alg: key.alg.name().into(),
        private_pem: key.private_pem.clone(),
        public_jwk: key.public_jwk.to_string(),
        created: unix_now(),
        retired: None,
    }
}

/// The freshness of a response by its `Cache-Control` (`max-age`, capped at a day;
/// `no-cache`/`no-store` mean none).
fn max_age(cache_control: &str) -> Duration {
    let mut age = None;
    for directive in cache_control.split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Duration::ZERO;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    Duration::from_secs(age.unwrap_or(300).min(86_400))
}

#[cfg(test)]
mod tests {
    use super::max_age;
    use std::time::Duration;

    #[test]
    fn cache_control() {
        assert_eq!(max_age("public, max-age=60"), Duration::from_secs(60));
        assert_eq!(max_age("no-store"), Duration::ZERO);
        assert_eq!(max_age("max-age=999999"), Duration::from_secs(86_400));
        assert_eq!(max_age("public"), Duration::from_secs(300));
    }
}
