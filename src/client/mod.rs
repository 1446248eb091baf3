//! The reference site client (`imagio-gateway client push` and `client pull`): what a
//! hospital's integration engine runs from cron. It finds the token endpoint by SMART discovery, gets an access
//! token with the `oauth2` crate's client-credentials flow authenticated by a JWT client
//! assertion it signs with the site's private key (RFC 7523; `oauth2` has no
//! `private_key_jwt`, so the assertion travels as extra parameters), renews the token before
//! it expires (and once on a 401), posts Bundles to the FHIR base and single resources to
//! their type, retries 429 and 503 with backoff, and reports per file what the server said.
//! [`pull`] searches types into NDJSON files.

mod pull;

pub use pull::{pull, study_types, Plan, PullReport, PullRequest};

use crate::auth::keys::{KeyError, SigningKey};
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, Scope, TokenResponse as _, TokenUrl};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What can stop the client before any file is sent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The private key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// HTTP to the server.
    #[error("{0}")]
    Http(String),
    /// The server's discovery document or token answer.
    #[error("{0}")]
    Token(String),
    /// Reading the input files.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The CA certificates to trust, or the TLS set-up.
    #[error("{0}")]
    Tls(String),
}

/// How to reach the gateway and who to be.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateway's base URL (`https://gateway.example.org`) or its FHIR base (`.../fhir`).
    pub server: String,
    /// The client id registered for the site.
    pub client_id: String,
    /// The site's private key (PEM).
    pub key: PathBuf,
    /// The key id registered with the public key; the key's RFC 7638 thumbprint when absent.
    pub kid: Option<String>,
    /// The scopes to ask for.
    pub scope: String,
    /// PEM certificates of a private CA (a hospital's) to trust besides the system's roots.
    pub ca_cert: Option<PathBuf>,
}

/// A valid access token, what it grants and when to renew it.
struct Token {
    value: String,
    scope: Option<String>,
    renew_at: Instant,
}

/// A session with the gateway: the signing key, the endpoints and the current token.
pub struct Session {
    settings: Settings,
    key: SigningKey,
    kid: String,
    http: reqwest::Client,
    fhir_base: String,
    token_url: String,
    token: Option<Token>,
}

impl Session {
    /// Reads the key and discovers the token endpoint.
    ///
    /// # Errors
    /// When the key cannot be read or the server's SMART configuration cannot be had.
    pub async fn connect(settings: Settings) -> Result<Session, ClientError> {
        let key = SigningKey::from_file(&settings.key)?;
        let kid = settings.kid.clone().unwrap_or_else(|| key.kid.clone());
        let http = http_client(settings.ca_cert.as_deref(), Duration::from_secs(300))?;
        let server = settings.server.trim_end_matches('/').to_string();
        let fhir_base = if server.ends_with("/fhir") {
            server.clone()
        } else {
            format!("{server}/fhir")
        };
        let discovery = format!("{fhir_base}/.well-known/smart-configuration");
        let resp = http
            .get(&discovery)
            .send()
            .await
            .map_err(|e| ClientError::Http(format!("{discovery}: {}", error_chain(&e))))?;
        if !resp.status().is_success() {
            return Err(ClientError::Token(format!(
                "{discovery}: status {}",
                resp.status()
            )));
        }
        let config: Value = serde_json::from_slice(
            &resp
                .bytes()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?,
        )
        .map_err(|e| ClientError::Token(format!("{discovery}: {e}")))?;
        let token_url = config
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::Token(format!("{discovery} has no token_endpoint")))?
            .to_string();
        Ok(Session {
            settings,
            key,
            kid,
            http,
            fhir_base,
            token_url,
            token: None,
        })
    }

    /// The client assertion: a JWT signed with the site's key, valid for four minutes.
    fn assertion(&self) -> Result<String, ClientError> {
        let now = crate::auth::unix_now();
        let claims = json!({
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + 240,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut key = self.key.clone();
        key.kid.clone_from(&self.kid);
        key.sign(&claims, "JWT")
            .map_err(|e| ClientError::Token(e.to_string()))
    }

    /// A valid access token, asking for a new one when there is none or it expires within
    /// 30 seconds.
    ///
    /// # Errors
    /// When the token endpoint refuses (its OAuth error is in the message).
    pub async fn token(&mut self) -> Result<String, ClientError> {
        if let Some(t) = &self.token {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        let client = BasicClient::new(ClientId::new(self.settings.client_id.clone()))
            .set_token_uri(
                TokenUrl::new(self.token_url.clone())
                    .map_err(|e| ClientError::Token(format!("token_endpoint: {e}")))?,
            )
            .set_auth_type(AuthType::RequestBody);
        let assertion = self.assertion()?;
        let http = self.http.clone();
        let send = move |req: oauth2::HttpRequest| {
            let http = http.clone();
            async move {
                let (parts, body) = req.into_parts();
                let resp = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await?;
                let mut out = oauth2::HttpResponse::new(bytes.to_vec());
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok::<_, reqwest::Error>(out)
            }
        };
        let mut request = client
            .exchange_client_credentials()
            .add_extra_param("client_assertion_type", crate::auth::ASSERTION_TYPE)
            .add_extra_param("client_assertion", assertion);
        for s in self.settings.scope.split_whitespace() {
            request = request.add_scope(Scope::new(s.to_string()));
        }
        let resp = request.request_async(&send).await.map_err(|e| {
            ClientError::Token(match e {
                oauth2::RequestTokenError::ServerResponse(r) => format!(
                    "token endpoint refused: {}{}",
                    r.error(),
                    r.error_description()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                other => format!("token request failed: {other}"),
            })
        })?;
        let lifetime = resp.expires_in().unwrap_or(Duration::from_secs(300));
        let value = resp.access_token().secret().clone();
        let scope = resp.scopes().map(|list| {
            list.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        });
        self.token = Some(Token {
            value: value.clone(),
            scope,
            renew_at: Instant::now() + lifetime.saturating_sub(Duration::from_secs(30)),
        });
        Ok(value)
    }

    /// The scopes the current token grants, as the token endpoint said (the requested
    /// ones when it did not say).
    ///
    /// # Errors
    /// When no token can be had.
    pub async fn granted(&mut self) -> Result<String, ClientError> {
        self.token().await?;
        Ok(self
            .token
            .as_ref()
            .and_then(|t| t.scope.clone())
            .unwrap_or_else(|| self.settings.scope.clone()))
    }

    /// The FHIR base URL of the server (`https://gateway.example.org/fhir`).
    pub fn fhir_base(&self) -> &str {
        &self.fhir_base
    }

    /// Sends one FHIR JSON document: a batch or transaction Bundle to the base, anything
    /// else to its type. Retries 429 and 503 with backoff (honouring `Retry-After`), and a
    /// 401 once with a new token.
    ///
    /// # Errors
    /// When no token can be had or the server cannot be reached.
    pub async fn send(&mut self, text: &str) -> Result<(u16, Value), ClientError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| ClientError::Http(format!("not JSON: {e}")))?;
        let rtype = doc
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let url = if rtype == "Bundle" || rtype.is_empty() {
            self.fhir_base.clone()
        } else {
            format!("{}/{rtype}", self.fhir_base)
        };
        let (status, body) = self
            .call(reqwest::Method::POST, &url, Some(text.to_string()))
            .await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// One authenticated request with the retries of [`Session::send`]; returns the status
    /// and the body.
    ///
    /// # Errors
    /// When no token can be had or the server cannot be reached.
    pub async fn call(
        &mut self,
        method: reqwest::Method,
        url: &str,
        body: Option<String>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let body = body.map(|b| (b.into_bytes(), "application/fhir+json".to_string()));
        self.call_raw(method, url, body).await
    }

    /// [`Session::call`] with a body of any media type: (bytes, `Content-Type`).
    ///
    /// # Errors
    /// When no token can be had or the server cannot be reached.
    pub async fn call_raw(
        &mut self,
        method: reqwest::Method,
        url: &str,
        body: Option<(Vec<u8>, String)>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut delay = Duration::from_millis(500);
        let mut renewed = false;
        for attempt in 1.. {
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token)
                .header("accept", "application/fhir+json");
            if let Some((b, content_type)) = &body {
                request = request
                    .header("content-type", content_type.as_str())
                    .body(b.clone());
            }
            let resp = request
                .send()
                .await
                .map_err(|e| ClientError::Http(format!("{url}: {}", error_chain(&e))))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            match status {
                401 if !renewed => {
                    self.token = None;
                    renewed = true;
                }
                429 | 503 if attempt < 6 => {
                    let wait = retry_after.map_or(delay, |s| Duration::from_secs(s.min(60)));
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                _ => return Ok((status, bytes.to_vec())),
            }
        }
        Err(ClientError::Http("unreachable retry loop end".into()))
    }
}

/// The certificates of a PEM file (a private CA, one or more certificates).
///
/// # Errors
/// When the file cannot be read or holds no PEM certificate.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|e| ClientError::Io(path.to_path_buf(), e))?;
    let bad = |why: String| {
        ClientError::Tls(format!(
            "{}: not a PEM certificate file ({why})",
            path.display()
        ))
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

/// The HTTP client for the gateway's outgoing calls (the reference client, JWKS URLs):
/// HTTPS with rustls, trusting the system's CA certificates (the Mozilla roots compiled
/// in when the system has none) and those of `ca_cert`.
///
/// # Errors
/// When `ca_cert` cannot be used, or TLS cannot be set up.
pub fn http_client(
    ca_cert: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    let extra = match ca_cert {
        Some(p) => ca_certificates(p)?,
        None => Vec::new(),
    };
    let system = reqwest::Client::builder()
        .timeout(timeout)
        .tls_certs_merge(extra.iter().cloned())
        .build();
    match system {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(
                error = %error_chain(&e),
                "no usable system CA certificates; trusting the compiled-in Mozilla roots"
            );
            let mozilla = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der).ok());
            reqwest::Client::builder()
                .timeout(timeout)
                .tls_certs_only(mozilla.chain(extra))
                .build()
                .map_err(|e| ClientError::Tls(format!("TLS set-up: {}", error_chain(&e))))
        }
    }
}

/// An error with its sources, which say why a connection failed (refused, certificate
/// not trusted, ...).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The outcome of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// The HTTP status, `None` when it could not be sent.
    pub status: Option<u16>,
    /// A one-line summary: entries written, or the OperationOutcome's issues.
    pub summary: String,
}

impl FileReport {
    /// Whether the server accepted it.
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The `.json` files of `paths` (folders walked recursively), sorted within each folder.
///
/// # Errors
/// When a folder cannot be read.
pub fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ClientError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| ClientError::Io(p.clone(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.is_dir());
            out.extend(
                files
                    .into_iter()
                    .filter(|f| f.extension().is_some_and(|x| x == "json")),
            );
            out.extend(input_files(&dirs)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Summarizes a response: for a Bundle response, how many entries succeeded; for an
/// OperationOutcome, its issues.
fn summarize(status: u16, body: &Value) -> String {
    match body.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {
            let entries = body
                .get("entry")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let ok = entries
                .iter()
                .filter(|e| {
                    e.pointer("/response/status")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.starts_with('2'))
                })
                .count();
            format!("{ok} of {} entries written", entries.len())
        }
        Some("OperationOutcome") => issues(body),
        Some(t) => format!("{t} written"),
        None => format!("status {status}"),
    }
}

/// The issues of an OperationOutcome on one line.
pub(crate) fn issues(oo: &Value) -> String {
    let list: Vec<String> = oo
        .get("issue")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or_default();
            let text = i
                .pointer("/details/text")
                .and_then(Value::as_str)
                .unwrap_or_else(|| s("diagnostics"));
            let at = i
                .pointer("/expression/0")
                .and_then(Value::as_str)
                .map(|e| format!(" at {e}"))
                .unwrap_or_default();
            format!("{} {}{at}: {text}", s("severity"), s("code"))
        })
        .collect();
    list.join("; ")
}

/// `client push`: sends every file and reports each. Returns the reports; the caller
/// prints them.
///
/// # Errors
/// When the session cannot start (key, discovery) or the inputs cannot be listed.
pub async fn push(settings: Settings, paths: &[PathBuf]) -> Result<Vec<FileReport>, ClientError> {
    push_with(settings, paths, None).await
}

/// The de-identification a site applies before sending: the policy with its key, and the
/// site's code at the gateway.
pub type Deidentify<'a> = (&'a crate::pseudonymize::Pseudonymizer, &'a str);

/// `client push`, each file de-identified first when `deidentify` is given (a file the
/// policy refuses is not sent; its report says why).
///
/// # Errors
/// As [`push`].
pub async fn push_with(
    settings: Settings,
    paths: &[PathBuf],
    deidentify: Option<Deidentify<'_>>,
) -> Result<Vec<FileReport>, ClientError> {
    let files = input_files(paths)?;
    let mut session = Session::connect(settings).await?;
    let mut reports = Vec::with_capacity(files.len());
    for path in files {
        reports.push(push_file(&mut session, &path, deidentify).await);
    }
    Ok(reports)
}

/// `text` de-identified when asked (`name` names it in a refusal).
fn prepare(
    text: String,
    name: &Path,
    deidentify: Option<Deidentify<'_>>,
) -> Result<String, String> {
    match deidentify {
        Some((p, site)) => {
            crate::pseudonymize::cli::deidentify_text(p, site, &text, &name.display().to_string())
                .map_err(|e| format!("not sent: de-identification refused it: {e}"))
        }
        None => Ok(text),
    }
}

/// Maps site exports with a mapping file at the site, as a check, and uploads the files as
/// they are to the server's `/fhir/ingest/{mapping}` (`multipart/form-data`, one part per
/// file named by its source), which maps, validates and stores them itself: the inputs are
/// first mapped and validated here exactly as `imagio-gateway map` does, and when the
/// mapping reports an error nothing is sent and the report names the rows and rules that
/// went wrong. One report, named after the mapping.
///
/// # Errors
/// When no token can be had (the mapping itself is judged before connecting).
pub async fn push_mapped(
    settings: Settings,
    mapping: &Path,
    inputs: &[PathBuf],
) -> Result<FileReport, ClientError> {
    push_mapped_with(settings, mapping, inputs, None).await
}

/// [`push_mapped`], the Bundle de-identified before it is sent when `deidentify` is given.
///
/// # Errors
/// As [`push_mapped`].
pub async fn push_mapped_with(
    settings: Settings,
    mapping: &Path,
    inputs: &[PathBuf],
    deidentify: Option<Deidentify<'_>>,
) -> Result<FileReport, ClientError> {
    let refused = |summary: String| FileReport {
        path: mapping.to_path_buf(),
        status: None,
        summary,
    };
    let (name, bundle, upload) = match map_inputs(mapping, inputs) {
        Ok(b) => b,
        Err(summary) => return Ok(refused(summary)),
    };
    if deidentify.is_some() {
        // De-identified at the site: the raw files would carry identifiers, so the mapped
        // Bundle is de-identified and sent as a transaction instead of the upload.
        let bundle = match prepare(bundle, mapping, deidentify) {
            Ok(b) => b,
            Err(summary) => return Ok(refused(summary)),
        };
        let mut session = Session::connect(settings).await?;
        return Ok(match session.send(&bundle).await {
            Ok((status, body)) => FileReport {
                path: mapping.to_path_buf(),
                status: Some(status),
                summary: summarize(status, &body),
            },
            Err(e) => refused(e.to_string()),
        });
    }
    let mut session = Session::connect(settings).await?;
    let url = format!("{}/ingest/{}", session.fhir_base, name);
    let content_type = format!(
        "multipart/form-data; boundary={}",
        crate::ingest::import::BOUNDARY
    );
    Ok(
        match session
            .call_raw(reqwest::Method::POST, &url, Some((upload, content_type)))
            .await
        {
            Ok((status, body)) => FileReport {
                path: mapping.to_path_buf(),
                status: Some(status),
                summary: summarize(
                    status,
                    &serde_json::from_slice(&body).unwrap_or(Value::Null),
                ),
            },
            Err(e) => refused(e.to_string()),
        },
    )
}

/// The mapping's name, the transaction Bundle it makes of `inputs` and their upload (a
/// `multipart/form-data` body), or why they are not to be sent: the mapping is run here
/// first and any error stops the push.
fn map_inputs(mapping: &Path, inputs: &[PathBuf]) -> Result<(String, String, Vec<u8>), String> {
    let spec = crate::map::load(mapping).map_err(|e| e.to_string())?;
    let files = inputs
        .iter()
        .map(|p| crate::map::Input::read(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let validator = crate::map::study_validator(None).map_err(|e| e.to_string())?;
    let mut bundle = Vec::new();
    let outcome = crate::map::run(&spec, &files, Some(&validator), false, &mut bundle)
        .map_err(|e| e.to_string())?;
    let bundle =
        String::from_utf8(bundle).map_err(|e| format!("the mapped Bundle is not UTF-8: {e}"))?;
    let errors: Vec<String> = outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(5).map(String::as_str).collect();
        return Err(format!(
            "not sent: the mapping reports {} error(s): {}{}",
            errors.len(),
            shown.join("; "),
            if errors.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        ));
    }
    let sources = crate::map::assign(&spec, &files).map_err(|e| e.to_string())?;
    // One part per source an input feeds (several FHIR sources may read one file).
    let parts: Vec<(usize, String, Vec<u8>)> = files
        .into_iter()
        .zip(sources)
        .flat_map(|(f, srcs)| {
            srcs.into_iter()
                .map(move |s| (s, f.name.clone(), f.bytes.clone()))
        })
        .collect();
    Ok((
        spec.name.clone(),
        bundle,
        crate::ingest::import::multipart(&parts, &spec),
    ))
}

async fn push_file(
    session: &mut Session,
    path: &Path,
    deidentify: Option<Deidentify<'_>>,
) -> FileReport {
    let text = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| prepare(t, path, deidentify))
    {
        Ok(t) => t,
        Err(e) => {
            return FileReport {
                path: path.to_path_buf(),
                status: None,
                summary: e,
            }
        }
    };
    match session.send(&text).await {
        Ok((status, body)) => FileReport {
            path: path.to_path_buf(),
            status: Some(status),
            summary: summarize(status, &body),
        },
        Err(e) => FileReport {
            path: path.to_path_buf(),
            status: None,
            summary: e.to_string(),
        },
    }
}
