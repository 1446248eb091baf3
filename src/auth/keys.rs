//! Keys: generating ES384 (P-384) and RS384 (RSA 2048) key pairs, private keys as PKCS#8
//! PEM, public keys as JWK (RFC 7517/7518) with an RFC 7638 thumbprint as `kid`, and the
//! `jsonwebtoken` signing and verifying keys made from them.
//!
//! Only the two algorithms of SMART Backend Services are known here: a header naming any
//! other (`none`, `HS256`, ...) never reaches a key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// The signature algorithms of SMART Backend Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alg {
    /// ECDSA on P-384 with SHA-384.
    #[value(name = "ES384")]
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    #[value(name = "RS384")]
    Rs384,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es384 => "ES384",
            Alg::Rs384 => "RS384",
        }
    }

    /// The algorithm named `name` (exactly `ES384` or `RS384`).
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "ES384" => Some(Alg::Es384),
            "RS384" => Some(Alg::Rs384),
            _ => None,
        }
    }

    /// The `jsonwebtoken` algorithm.
    pub fn jwt(self) -> Algorithm {
        match self {
            Alg::Es384 => Algorithm::ES384,
            Alg::Rs384 => Algorithm::RS384,
        }
    }

    /// The algorithm of a `jsonwebtoken` header, when it is one of ours.
    pub fn from_jwt(alg: Algorithm) -> Option<Alg> {
        match alg {
            Algorithm::ES384 => Some(Alg::Es384),
            Algorithm::RS384 => Some(Alg::Rs384),
            _ => None,
        }
    }
}

/// What can go wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM text is not a private key of a supported kind.
    #[error("not a PKCS#8 or PKCS#1 RSA, or PKCS#8 or SEC1 P-384, private key in PEM")]
    Pem,
    /// The JWK does not describe a key usable with the algorithm.
    #[error("JWK: {0}")]
    Jwk(String),
    /// Key generation or encoding failed.
    #[error("key generation: {0}")]
    Generate(String),
    /// Reading or writing a key file.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A private key ready to sign, with its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// The algorithm it signs with.
    pub alg: Alg,
    /// Its key id (the RFC 7638 thumbprint of the public key).
    pub kid: String,
    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub public_jwk: Value,
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Makes a new random key pair.
    ///
    /// # Errors
    /// When the system's random source or the encoder fails.
    pub fn generate(alg: Alg) -> Result<SigningKey, KeyError> {
        let mut rng = rand_core::OsRng;
        let pem = match alg {
            Alg::Es384 => p384::SecretKey::random(&mut rng)
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeyError::Generate(e.to_string()))?,
            Alg::Rs384 => rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeyError::Generate(e.to_string()))?,
        };
        SigningKey::from_pem(&pem)
    }

    /// Reads a private key from PEM: RSA (PKCS#8 or PKCS#1) signs RS384, P-384 (PKCS#8 or
    /// SEC1) signs ES384.
    ///
    /// # Errors
    /// When the text is not such a key.
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        if let Some(key) = rsa::RsaPrivateKey::from_pkcs8_pem(pem).ok().or_else(|| {
            use rsa::pkcs1::DecodeRsaPrivateKey as _;
            rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok()
        }) {
            let public = rsa_jwk(&key.to_public_key());
            let der = key.to_pkcs1_der().map_err(|_| KeyError::Pem)?;
            let private_pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::Pem)?
                .to_string();
            return Ok(SigningKey::assemble(
                Alg::Rs384,
                public,
                private_pem,
                EncodingKey::from_rsa_der(der.as_bytes()),
            ));
        }
        let key = p384::SecretKey::from_pkcs8_pem(pem)
            .ok()
            .or_else(|| p384::SecretKey::from_sec1_pem(pem).ok())
            .ok_or(KeyError::Pem)?;
        let public = ec_jwk(&key.public_key());
        let der = key.to_pkcs8_der().map_err(|_| KeyError::Pem)?;
        let private_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Pem)?
            .to_string();
        Ok(SigningKey::assemble(
            Alg::Es384,
            public,
            private_pem,
            EncodingKey::from_ec_der(der.as_bytes()),
        ))
    }

    /// Reads a PEM private key file.
    ///
    /// # Errors
    /// When the file cannot be read or holds no supported key.
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
        SigningKey::from_pem(&text)
    }

    fn assemble(alg: Alg, mut public: Value, private_pem: String, encoding: EncodingKey) -> Self {
        let kid = thumbprint(&public);
        if let Some(o) = public.as_object_mut() {
            o.insert("kid".into(), Value::String(kid.clone()));
            o.insert("alg".into(), Value::String(alg.name().into()));
            o.insert("use".into(), Value::String("sig".into()));
        }
        SigningKey {
            alg,
            kid,
            public_jwk: public,
            private_pem,
            encoding,
        }
    }

    /// Signs `claims` as a compact JWT with `kid` (and `typ`) in the header.
    ///
    /// # Errors
    /// When the claims cannot be serialized or signing fails.
    pub fn sign(&self, claims: &Value, typ: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = jsonwebtoken::Header::new(self.alg.jwt());
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// The public key as a JWKS document (`{"keys": [jwk]}`).
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk] })
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_jwk(key: &rsa::RsaPublicKey) -> Value {
    json!({
        "kty": "RSA",
        "n": b64(&key.n().to_bytes_be()),
        "e": b64(&key.e().to_bytes_be()),
    })
}

fn ec_jwk(key: &p384::PublicKey) -> Value {
    use p384::elliptic_curve::sec1::ToEncodedPoint as _;
    let point = key.to_encoded_point(false);
    json!({
        "kty": "EC",
        "crv": "P-384",
        "x": point.x().map(|x| b64(x)).unwrap_or_default(),
        "y": point.y().map(|y| b64(y)).unwrap_or_default(),
    })
}

/// The RFC 7638 thumbprint of a public JWK (SHA-256 over its required members in
/// lexicographic order), base64url.
pub fn thumbprint(jwk: &Value) -> String {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str).unwrap_or_default();
    let canonical = match s("kty") {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        _ => format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("kty"),
            s("x"),
            s("y")
        ),
    };
    b64(&sha2::Sha256::digest(canonical.as_bytes()))
}

/// The key to verify `alg` signatures with, from a public JWK. The JWK must be of the
/// algorithm's family (RSA for RS384, EC P-384 for ES384), and, when it names an `alg` or
/// a `use`, name `alg` and `sig`: a key is never used with an algorithm it was not made for.
///
/// # Errors
/// When the JWK does not fit.
pub fn decoding_key(jwk: &Value, alg: Alg) -> Result<DecodingKey, KeyError> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    if let Some(a) = s("alg") {
        if a != alg.name() {
            return Err(KeyError::Jwk(format!("key is for {a}, not {}", alg.name())));
        }
    }
    if let Some(u) = s("use") {
        if u != "sig" {
            return Err(KeyError::Jwk(format!("key use is {u}, not sig")));
        }
    }
    let missing = |k: &str| KeyError::Jwk(format!("missing {k}"));
    match alg {
        Alg::Rs384 => {
            if s("kty") != Some("RSA") {
                return Err(KeyError::Jwk("RS384 needs an RSA key".into()));
            }
            DecodingKey::from_rsa_components(
                s("n").ok_or_else(|| missing("n"))?,
                s("e").ok_or_else(|| missing("e"))?,
            )
            .map_err(|e| KeyError::Jwk(e.to_string()))
        }
        Alg::Es384 => {
            if s("kty") != Some("EC") || s("crv") != Some("P-384") {
                return Err(KeyError::Jwk("ES384 needs an EC P-384 key".into()));
            }
            DecodingKey::from_ec_components(
                s("x").ok_or_else(|| missing("x"))?,
                s("y").ok_or_else(|| missing("y"))?,
            )
            .map_err(|e| KeyError::Jwk(e.to_string()))
        }
    }
}

/// What `keys generate` wrote.
#[derive(Debug)]
pub struct Generated {
    /// The key.
    pub key: SigningKey,
    /// The private key file.
    pub private_path: PathBuf,
    /// The public JWKS file.
    pub jwks_path: PathBuf,
}

/// Writes a new key pair into `dir`: `<kid>.key.pem` (private, mode 0600 on unix) and
/// `<kid>.jwks.json` (the public JWKS to register).
///
/// # Errors
/// When generation or writing fails.
pub fn generate_files(alg: Alg, dir: &Path) -> Result<Generated, KeyError> {
    let key = SigningKey::generate(alg)?;
    std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(dir.to_path_buf(), e))?;
    let stem = format!("{}-{}", alg.name().to_ascii_lowercase(), &key.kid[..12]);
    let private_path = dir.join(format!("{stem}.key.pem"));
    let jwks_path = dir.join(format!("{stem}.jwks.json"));
    write_private(&private_path, &key.private_pem)?;
    let jwks = serde_json::to_string_pretty(&key.public_jwks()).unwrap_or_default();
    std::fs::write(&jwks_path, jwks + "\n").map_err(|e| KeyError::Io(jwks_path.clone(), e))?;
    Ok(Generated {
        key,
        private_path,
        jwks_path,
    })
}

/// Writes a private key file readable by its owner only.
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &Path, pem: &str) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
    std::io::Write::write_all(&mut file, pem.as_bytes())
        .map_err(|e| KeyError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_thumbprint_kid() {
        for alg in [Alg::Es384, Alg::Rs384] {
            let key = SigningKey::generate(alg).expect("generate");
            let again = SigningKey::from_pem(&key.private_pem).expect("parse");
            assert_eq!(again.kid, key.kid);
            assert_eq!(again.alg, alg);
            let token = key.sign(&json!({"a": 1}), "JWT").expect("sign");
            let dk = decoding_key(&key.public_jwk, alg).expect("jwk");
            let mut v = jsonwebtoken::Validation::new(alg.jwt());
            v.required_spec_claims.clear();
            v.validate_exp = false;
            jsonwebtoken::decode::<Value>(&token, &dk, &v).expect("verify");
            let other = if alg == Alg::Es384 {
                Alg::Rs384
            } else {
                Alg::Es384
            };
            assert!(decoding_key(&key.public_jwk, other).is_err());
        }
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
