//! Client administration: registering (`clients add`), listing, revoking, rotating the
//! gateway's key, the same operations for the admin API, and the demo site client that a
//! fresh `serve` makes so a site can try the gateway at once.

use super::keys::{Alg, SigningKey};
use super::scopes::Scopes;
use super::Role;
use crate::store::auth::ClientRow;
use crate::store::{Store, StoreError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What can go wrong administering clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad argument (scope, JWKS, URL, duplicate id).
    #[error("{0}")]
    Invalid(String),
    /// A key.
    #[error(transparent)]
    Key(#[from] super::keys::KeyError),
    /// Reading or writing a file.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Its id; a new UUID when not given.
    pub id: Option<String>,
    /// Its site.
    pub site: String,
    /// Its role.
    pub role: Role,
    /// The scopes it may be granted (space-separated).
    pub scope: String,
    /// Its public keys, inline.
    pub jwks: Option<Value>,
    /// Where its public keys are published.
    pub jwks_url: Option<String>,
}

impl NewClient {
    /// From the admin API's JSON (`{"id"?, "site", "role", "scope", "jwks" | "jwks_url"}`).
    ///
    /// # Errors
    /// When a member is missing or of the wrong kind.
    pub fn from_json(v: &Value) -> Result<NewClient, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let role = s("role").ok_or("role is missing")?;
        Ok(NewClient {
            id: s("id"),
            site: s("site").ok_or("site is missing")?,
            role: Role::from_name(&role).ok_or("role must be site, sponsor or admin")?,
            scope: s("scope").ok_or("scope is missing")?,
            jwks: v.get("jwks").cloned(),
            jwks_url: s("jwks_url"),
        })
    }
}

/// Checks and stores a new client.
///
/// # Errors
/// [`ClientError::Invalid`] for a bad scope, JWKS or URL, or an id in use.
pub async fn add(store: &Store, c: &NewClient) -> Result<ClientRow, ClientError> {
    let invalid = |m: String| ClientError::Invalid(m);
    let scopes = Scopes::parse(&c.scope).map_err(|e| invalid(e.to_string()))?;
    super::narrow::check(&scopes).map_err(|e| invalid(e.to_string()))?;
    if c.site.is_empty()
        || !c
            .site
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        return Err(invalid(
            "site must be letters, digits, '-', '_' or '.'".into(),
        ));
    }
    match (&c.jwks, &c.jwks_url) {
        (Some(jwks), None) => check_jwks(jwks).map_err(invalid)?,
        (None, Some(url)) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid("jwks_url must be an http(s) URL".into()));
            }
        }
        _ => return Err(invalid("give exactly one of a JWKS and a JWKS URL".into())),
    }
    let id =
        c.id.clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if store.client(&id).await?.is_some() {
        return Err(invalid(format!("a client {id} exists already")));
    }
    let row = ClientRow {
        id,
        site: c.site.clone(),
        role: c.role.name().into(),
        scope: c.scope.clone(),
        jwks: c.jwks.as_ref().map(Value::to_string),
        jwks_url: c.jwks_url.clone(),
        created: crate::store::time::now(),
        revoked: None,
    };
    store.insert_client(&row).await?;
    Ok(row)
}

/// A JWKS must hold at least one public key with a `kid`, and no private members.
fn check_jwks(jwks: &Value) -> Result<(), String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or("the JWKS has no keys")?;
    for k in keys {
        if k.get("kid").and_then(Value::as_str).is_none() {
            return Err("every key of the JWKS needs a kid".into());
        }
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|m| k.get(m).is_some())
        {
            return Err("the JWKS holds a private key: register the public key only".into());
        }
    }
    Ok(())
}

/// A client as the admin API and `clients list` show it.
pub fn client_json(c: &ClientRow) -> Value {
    json!({
        "id": c.id,
        "site": c.site,
        "role": c.role,
        "scope": c.scope,
        "jwks_url": c.jwks_url,
        "kids": c.jwks.as_deref()
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|j| j.get("keys").and_then(Value::as_array).map(|ks| {
                ks.iter().filter_map(|k| k.get("kid").cloned()).collect::<Vec<_>>()
            })),
        "created": c.created,
        "revoked": c.revoked,
    })
}

/// Reads a JWKS file (a JWKS, or a single JWK which is wrapped).
///
/// # Errors
/// When the file cannot be read or is not JSON.
pub fn read_jwks(path: &Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::Io(path.to_path_buf(), e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(if v.get("keys").is_some() {
        v
    } else {
        json!({ "keys": [v] })
    })
}

/// What a fresh start made for a site to try the gateway.
#[derive(Debug)]
pub struct Demo {
    /// The folder written.
    pub dir: PathBuf,
    /// The client id.
    pub client_id: String,
}

/// On a database with no clients, registers a demo site client (site `demo`, ES384, scope
/// `system/*.cruds`) and writes its private key, public JWKS and an example command into
/// `dir`. Returns `None` when clients exist.
///
/// # Errors
/// When the database or the files fail.
pub async fn ensure_demo(
    store: &Store,
    server: &str,
    dir: &Path,
) -> Result<Option<Demo>, ClientError> {
    if !store.clients().await?.is_empty() {
        return Ok(None);
    }
    let key = SigningKey::generate(Alg::Es384)?;
    let row = add(
        store,
        &NewClient {
            id: Some("demo-site".into()),
            site: "demo".into(),
            role: Role::Site,
            scope: "system/*.cruds".into(),
            jwks: Some(key.public_jwks()),
            jwks_url: None,
        },
    )
    .await?;
    std::fs::create_dir_all(dir).map_err(|e| ClientError::Io(dir.to_path_buf(), e))?;
    let key_path = dir.join("demo-site.key.pem");
    super::keys::write_private(&key_path, &key.private_pem)?;
    let key_path = std::fs::canonicalize(&key_path).unwrap_or(key_path);
    let jwks_path = dir.join("demo-site.jwks.json");
    std::fs::write(&jwks_path, key.public_jwks().to_string())
        .map_err(|e| ClientError::Io(jwks_path.clone(), e))?;
    let example = dir.join("push-example.sh");
    let script = format!(
        "#!/bin/sh\n# Pushes a FHIR Bundle (or a folder of them) to the gateway as the demo site client.\n\
         exec imagio-gateway client push \"${{1:-profiles/examples/journeys}}\" \\\n  --server {server} \\\n  --client-id {} \\\n  --key {}\n",
        row.id,
        key_path.display()
    );
    std::fs::write(&example, script).map_err(|e| ClientError::Io(example.clone(), e))?;
    Ok(Some(Demo {
        dir: dir.to_path_buf(),
        client_id: row.id,
    }))
}

/// What `serve` does for authentication on start: under `--no-auth` a warning; otherwise
/// the gateway's signing key is made if missing, and on a database without clients the
/// demo site client is made in `./imagio-demo/` and announced on standard output.
///
/// # Errors
/// When the database or the demo files fail.
pub async fn start(state: &crate::serve::AppState) -> Result<(), crate::serve::ServeError> {
    let auth = state.auth();
    if auth.config().disabled {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED (--no-auth): every request acts as an admin of site 'local'"
        );
        eprintln!(
            "WARNING: authentication is disabled (--no-auth); use this for local testing only"
        );
        return Ok(());
    }
    let fail = |e: String| crate::serve::ServeError::Auth(e);
    auth.signing_key().await.map_err(|e| fail(e.to_string()))?;
    let dir = PathBuf::from("imagio-demo");
    if let Some(demo) = ensure_demo(state.auth().store(), auth.base_url(), &dir)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        let shown = std::fs::canonicalize(&demo.dir).unwrap_or(demo.dir);
        tracing::info!(client = %demo.client_id, dir = %shown.display(), "demo site client created");
        println!(
            "no clients were registered: created the demo site client '{}'; its key and an example \
             push command are in {}",
            demo.client_id,
            shown.display()
        );
    }
    Ok(())
}

/// A `clients` subcommand.
#[derive(Debug, Clone)]
pub enum Cli {
    /// `clients add`.
    Add {
        /// Client id (default: a new UUID).
        id: Option<String>,
        /// Site.
        site: String,
        /// Role.
        role: Role,
        /// JWKS file.
        jwks: Option<PathBuf>,
        /// JWKS URL.
        jwks_url: Option<String>,
        /// Allowed scopes.
        scope: String,
    },
    /// `clients list`.
    List,
    /// `clients revoke ID`.
    Revoke(String),
    /// `clients rotate-gateway-key`.
    RotateGatewayKey,
}

/// Runs a `clients` subcommand on the database at `database_url`; exit code 0 on success,
/// 1 when the client to revoke does not exist, 2 on errors.
pub async fn cli(database_url: String, command: Cli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let store = match Store::open(&database_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result: Result<ExitCode, ClientError> = async {
        match command {
            Cli::Add {
                id,
                site,
                role,
                jwks,
                jwks_url,
                scope,
            } => {
                let jwks = jwks.as_deref().map(read_jwks).transpose()?;
                let row = add(
                    &store,
                    &NewClient {
                        id,
                        site,
                        role,
                        scope,
                        jwks,
                        jwks_url,
                    },
                )
                .await?;
                println!("{}", row.id);
                Ok(ExitCode::SUCCESS)
            }
            Cli::List => {
                let rows = store.clients().await?;
                let list: Vec<Value> = rows.iter().map(client_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            }
            Cli::Revoke(id) => {
                if store.revoke_client(&id, &crate::store::time::now()).await? {
                    println!("revoked {id}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no active client {id}");
                    Ok(ExitCode::from(1))
                }
            }
            Cli::RotateGatewayKey => {
                let auth = super::Auth::new(store.clone(), super::AuthConfig::default());
                let kid = auth
                    .rotate()
                    .await
                    .map_err(|e| ClientError::Invalid(e.to_string()))?;
                println!("new gateway signing key {kid}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
    .await;
    store.close().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
