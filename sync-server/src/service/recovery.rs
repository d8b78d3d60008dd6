//! Recovery envelopes: vault keys wrapped to the account's recovery secret, filed under
//! [`RECOVERY_RECIPIENT`]. The server cannot open or forge them (the secret never leaves the
//! user); it only keeps them per (vault, epoch) for the account's devices.

use dooz_protocol::{
    Ack, EnvelopeInfo, Envelopes, ErrorCode, ErrorResponse, GetEnvelopes, PutEnvelope,
    RECOVERY_ENVELOPES_TAG, RECOVERY_RECIPIENT, Response, VaultId,
};

use crate::service::connection::ConnCtx;

/// Whether a `PutEnvelope` stores a recovery envelope.
pub(crate) fn is_put(req: &PutEnvelope) -> bool {
    req.recipient == RECOVERY_RECIPIENT
}

/// Whether a `GetEnvelopes` asks for the recovery envelopes.
pub(crate) fn is_get(req: &GetEnvelopes) -> bool {
    req.ext.get(RECOVERY_ENVELOPES_TAG).is_some()
}

fn internal(what: &str, e: impl std::fmt::Display) -> ErrorResponse {
    tracing::error!(error = %e, "could not {what}");
    ErrorResponse::new(
        ErrorCode::Internal,
        format!("the server could not {what}; try again later"),
    )
}

async fn check_vault(ctx: &ConnCtx, vault: VaultId) -> Result<(), ErrorResponse> {
    match ctx.shared.store.vault(vault).await {
        Ok(Some(record)) if record.account == ctx.account.id => Ok(()),
        Ok(_) => Err(ErrorResponse::new(
            ErrorCode::NotFound,
            format!("vault {vault:#} not found in this account"),
        )),
        Err(e) => Err(internal("look the vault up", e)),
    }
}

/// Stores a recovery envelope of one of the account's vaults.
pub(crate) async fn put(ctx: &ConnCtx, req: PutEnvelope) -> Result<Response, ErrorResponse> {
    check_vault(ctx, req.vault).await?;
    ctx.shared
        .store
        .put_envelope(
            req.vault,
            req.epoch,
            RECOVERY_RECIPIENT,
            ctx.device,
            req.envelope,
        )
        .await
        .map_err(|e| internal("store the recovery envelope", e))?;
    Ok(Response::Ok(Ack::default()))
}

/// The recovery envelopes of one of the account's vaults.
pub(crate) async fn get(ctx: &ConnCtx, req: GetEnvelopes) -> Result<Response, ErrorResponse> {
    check_vault(ctx, req.vault).await?;
    let envelopes: Vec<EnvelopeInfo> = ctx
        .shared
        .store
        .envelopes_for(req.vault, RECOVERY_RECIPIENT)
        .await
        .map_err(|e| internal("read the recovery envelopes", e))?;
    Ok(Response::Envelopes(Envelopes {
        envelopes,
        ext: Default::default(),
    }))
}
