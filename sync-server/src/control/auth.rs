//! Who is calling: the `Authorization: Bearer` extractor, scope checks and tenant isolation,
//! and extractors whose rejections are problem+json.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::control::AppState;
use crate::control::model::Scope;
use crate::control::problem::Problem;
use crate::control::secrets::{API_KEY_PREFIX, Secret, SecretKind};
use crate::service::unix_now;

/// `last_used` of a key is written at most this often (seconds), to keep reads read-only.
const LAST_USED_RESOLUTION: u64 = 60;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator's admin token: everything.
    Admin,
    /// A tenant API key.
    Key {
        /// The key's id.
        id: u64,
        /// Its tenant.
        tenant: u64,
        /// Its scopes.
        scopes: Vec<Scope>,
    },
}

impl Caller {
    /// Who, as the audit log writes it.
    pub fn actor(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::Key { id, .. } => format!("key:{id}"),
        }
    }

    /// Refuses a caller other than the operator (403).
    pub fn require_operator(&self) -> Result<(), Problem> {
        match self {
            Self::Admin => Ok(()),
            Self::Key { .. } => Err(Problem::forbidden(
                "this needs the operator's admin token; tenant API keys manage their own tenant \
                 under /v1/tenants/{id}",
            )),
        }
    }

    /// Checks that the caller may see `tenant` at all (any scope); 404 for a key of another
    /// tenant.
    pub fn require_tenant(&self, tenant: u64) -> Result<(), Problem> {
        match self {
            Self::Key { tenant: own, .. } if *own != tenant => {
                Err(Problem::not_found(format!("tenant {tenant}")))
            }
            _ => Ok(()),
        }
    }

    /// Checks that the caller may act on `tenant` with `scope`. A key of another tenant gets
    /// the same 404 as a missing tenant, so that keys cannot probe for other tenants.
    pub fn require(&self, tenant: u64, scope: Scope) -> Result<(), Problem> {
        match self {
            Self::Admin => Ok(()),
            Self::Key { tenant: own, .. } if *own != tenant => {
                Err(Problem::not_found(format!("tenant {tenant}")))
            }
            Self::Key { scopes, .. }
                if scopes.contains(&Scope::Admin) || scopes.contains(&scope) =>
            {
                Ok(())
            }
            Self::Key { .. } => Err(Problem::forbidden(format!(
                "this API key lacks the {} scope; make a key with it (POST \
                 /v1/tenants/{tenant}/api_keys)",
                scope_name(scope)
            ))),
        }
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Admin => "admin",
        Scope::Devices => "devices",
        Scope::UsageRead => "usage:read",
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let missing = || {
            Problem::unauthorized(
                "send a credential: Authorization: Bearer <admin token or API key>",
            )
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(missing)?;
        let text = value.to_str().map_err(|_| missing())?;
        let (scheme, token) = text.split_once(' ').ok_or_else(missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(missing());
        }
        let token = token.trim();
        let invalid = || {
            Problem::unauthorized(
                "the credential is not valid (unknown, revoked or expired); check it or ask \
                 for a new API key",
            )
        };
        if token.starts_with(API_KEY_PREFIX) {
            let secret = Secret::parse(SecretKind::ApiKey, token).ok_or_else(invalid)?;
            let hash = secret.hash();
            let mut key = state.control.api_key_by_hash(&hash)?.ok_or_else(invalid)?;
            let now = unix_now();
            if key.revoked_at.is_some() || key.expires_at.is_some_and(|at| at <= now) {
                return Err(invalid());
            }
            if key
                .last_used
                .is_none_or(|at| now.saturating_sub(at) >= LAST_USED_RESOLUTION)
            {
                key.last_used = Some(now);
                state.control.update_api_key(&key)?;
            }
            return Ok(Self::Key {
                id: key.id,
                tenant: key.tenant,
                scopes: key.scopes,
            });
        }
        let secret = Secret::parse_admin(token).ok_or_else(invalid)?;
        match state.control.admin_token_hash()? {
            Some(stored) if stored.matches(&secret.hash()) => Ok(Self::Admin),
            _ => Err(invalid()),
        }
    }
}

/// `Json<T>` whose rejection is a [`Problem`] (400 bad JSON, 415 wrong media type, 422 bad
/// values).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `Path<T>` whose rejection is a 404 [`Problem`].
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// `Query<T>` whose rejection is a 400 [`Problem`].
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
