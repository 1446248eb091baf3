//! The tables of SMART Backend Services (migration `0003_auth`): registered clients, used
//! client-assertion ids (`jti`) and the gateway's token-signing keys. Only SQL lives here;
//! what the rows mean is `crate::auth`'s business.

use super::{Backend, Result, Store, TxInner};
use sqlx::Row as _;

/// A registered client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// The client id (`iss` and `sub` of its assertions).
    pub id: String,
    /// The site it belongs to.
    pub site: String,
    /// `site`, `sponsor` or `admin`.
    pub role: String,
    /// The scopes it may be granted, space-separated.
    pub scope: String,
    /// Its public keys as a JWKS document, when registered inline.
    pub jwks: Option<String>,
    /// Where its JWKS is published, when registered by URL.
    pub jwks_url: Option<String>,
    /// When it was registered (instant text).
    pub created: String,
    /// When it was revoked, if it was.
    pub revoked: Option<String>,
}

/// A token-signing key of the gateway as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayKeyRow {
    /// Key id (the `kid` of the tokens it signs).
    pub kid: String,
    /// `ES384` or `RS384`.
    pub alg: String,
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    /// The public key as a JWK (JSON text).
    pub public_jwk: String,
    /// When it was made (Unix seconds).
    pub created: i64,
    /// When it stopped signing (Unix seconds); `None` for the current key.
    pub retired: Option<i64>,
}

const CLIENT_COLUMNS: &str = "id, site, role, scope, jwks, jwks_url, created, revoked";
const KEY_COLUMNS: &str = "kid, alg, private_pem, public_jwk, created, retired";

macro_rules! client_row {
    ($r:expr) => {{
        let r = $r;
        ClientRow {
            id: r.try_get("id")?,
            site: r.try_get("site")?,
            role: r.try_get("role")?,
            scope: r.try_get("scope")?,
            jwks: r.try_get("jwks")?,
            jwks_url: r.try_get("jwks_url")?,
            created: r.try_get("created")?,
            revoked: r.try_get("revoked")?,
        }
    }};
}

macro_rules! key_row {
    ($r:expr) => {{
        let r = $r;
        GatewayKeyRow {
            kid: r.try_get("kid")?,
            alg: r.try_get("alg")?,
            private_pem: r.try_get("private_pem")?,
            public_jwk: r.try_get("public_jwk")?,
            created: r.try_get("created")?,
            retired: r.try_get("retired")?,
        }
    }};
}

impl Store {
    /// Registers a client.
    ///
    /// # Errors
    /// On database failure (a duplicate id is a unique violation).
    pub async fn insert_client(&self, c: &ClientRow) -> Result<()> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO auth_client ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        on_tx!(tx, |c_| sqlx::query(&sql)
            .bind(&c.id)
            .bind(&c.site)
            .bind(&c.role)
            .bind(&c.scope)
            .bind(&c.jwks)
            .bind(&c.jwks_url)
            .bind(&c.created)
            .bind(&c.revoked)
            .execute(c_)
            .await?
            .rows_affected());
        tx.commit().await
    }

    /// Every registered client, revoked ones included, by id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn clients(&self) -> Result<Vec<ClientRow>> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM auth_client ORDER BY id");
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).fetch_all(c).await? {
                out.push(client_row!(&r));
            }
            out
        });
        Ok(rows)
    }

    /// One client by id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn client(&self, id: &str) -> Result<Option<ClientRow>> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM auth_client WHERE id = $1");
        let row = on_pool!(
            self,
            |c| match sqlx::query(&sql).bind(id).fetch_optional(c).await? {
                Some(r) => Some(client_row!(&r)),
                None => None,
            }
        );
        Ok(row)
    }

    /// Marks a client revoked at `when`. Returns whether a client not yet revoked was found.
    ///
    /// # Errors
    /// On database failure.
    pub async fn revoke_client(&self, id: &str, when: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = on_tx!(tx, |c| sqlx::query(
            "UPDATE auth_client SET revoked = $1 WHERE id = $2 AND revoked IS NULL"
        )
        .bind(when)
        .bind(id)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Records that `client` used the assertion id `jti`, valid until `expires` (Unix
    /// seconds), after forgetting ids that expired before `now`. Returns `false` when the
    /// id was already recorded (a replay).
    ///
    /// # Errors
    /// On database failure.
    pub async fn claim_jti(&self, client: &str, jti: &str, expires: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        on_tx!(tx, |c| sqlx::query(
            "DELETE FROM auth_jti WHERE expires < $1"
        )
        .bind(now)
        .execute(c)
        .await?
        .rows_affected());
        let inserted = on_tx!(tx, |c| sqlx::query(
            "INSERT INTO auth_jti (client_id, jti, expires) VALUES ($1, $2, $3) \
             ON CONFLICT (client_id, jti) DO NOTHING"
        )
        .bind(client)
        .bind(jti)
        .bind(expires)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// The gateway's signing keys, newest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn gateway_keys(&self) -> Result<Vec<GatewayKeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM auth_gateway_key ORDER BY created DESC, kid");
        let rows = on_pool!(self, |c| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).fetch_all(c).await? {
                out.push(key_row!(&r));
            }
            out
        });
        Ok(rows)
    }

    /// Adds `key` as the current signing key. With `retire_others`, the keys current until
    /// now are retired at `key.created`; without it, the key is added only when there is no
    /// current key (first start of several replicas at once). Returns whether it was added.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add_gateway_key(&self, key: &GatewayKeyRow, retire_others: bool) -> Result<bool> {
        let mut tx = self.begin().await?;
        tx.lock("auth_gateway_key").await?;
        if retire_others {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE auth_gateway_key SET retired = $1 WHERE retired IS NULL"
            )
            .bind(key.created)
            .execute(c)
            .await?
            .rows_affected());
        } else {
            let current: i64 = on_tx!(tx, |c| sqlx::query(
                "SELECT COUNT(*) AS n FROM auth_gateway_key WHERE retired IS NULL"
            )
            .fetch_one(c)
            .await?
            .try_get("n")?);
            if current > 0 {
                return Ok(false);
            }
        }
        let sql =
            format!("INSERT INTO auth_gateway_key ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
        on_tx!(tx, |c| sqlx::query(&sql)
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(&key.private_pem)
            .bind(&key.public_jwk)
            .bind(key.created)
            .bind(key.retired)
            .execute(c)
            .await?
            .rows_affected());
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes keys retired before `before` (Unix seconds): no token they signed is still
    /// valid.
    ///
    /// # Errors
    /// On database failure.
    pub async fn prune_gateway_keys(&self, before: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = on_tx!(tx, |c| sqlx::query(
            "DELETE FROM auth_gateway_key WHERE retired IS NOT NULL AND retired < $1"
        )
        .bind(before)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok(n)
    }
}
