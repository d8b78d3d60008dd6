//! One connection: admission (or enrolment), then a task per request stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dooz_protocol::{
    DeviceId, ErrorCode, ErrorResponse, HelloOk, Message, PROTOCOL_VERSION, Request, Resource,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::frame_io::{FrameReader, write_frame};
use crate::policy::Access;
use crate::service::codes::{CloseCode, SHUTTING_DOWN_REASON};
use crate::service::enrolment::EnrolRequest;
use crate::service::quota::check_limit;
use crate::service::{Shared, handlers, log_join, unix_now};
use crate::store::{AccountRecord, DeviceRegistration, StoreError, TenantRecord};
use crate::tls::{ENROL_ALPN, device_id_from_key, negotiated_alpn, peer_identity_key};

/// How long an enrolment connection may take to send its request.
const ENROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Name and version this server reports in `HelloOk`.
pub(crate) const SERVER_VERSION: &str = concat!("dooz-server ", env!("CARGO_PKG_VERSION"));

/// An admitted connection: who is on the other end.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) device: DeviceId,
    pub(crate) tenant: TenantRecord,
    pub(crate) account: AccountRecord,
    /// The connection's current subscription; a new `Subscribe` cancels the previous one.
    pub(crate) subscription: Mutex<Option<CancellationToken>>,
}

impl ConnCtx {
    /// The `HelloOk` for this device.
    pub(crate) fn hello_ok(&self) -> HelloOk {
        hello_ok(self.device, &self.tenant, &self.account)
    }
}

fn hello_ok(device: DeviceId, tenant: &TenantRecord, account: &AccountRecord) -> HelloOk {
    HelloOk {
        protocol_version: PROTOCOL_VERSION,
        server_version: SERVER_VERSION.to_owned(),
        device,
        tenant: tenant.name.clone(),
        account: account.name.clone(),
        ext: Default::default(),
    }
}

pub(crate) fn unknown_reason(device: DeviceId) -> String {
    format!(
        "device {device:#} is not enrolled on this server: enrol it first with an enrolment code \
         from the server's admin (`dooz enroll <code>`)"
    )
}

pub(crate) fn revoked_reason(device: DeviceId) -> String {
    format!(
        "device {device:#} was revoked on this server and can no longer sync; enrol it again \
         with a new enrolment code if this was a mistake"
    )
}

/// Serves one incoming connection to the end.
pub(crate) async fn handle(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    // The verifier only lets Ed25519 certificates through, so this is always `Some`.
    let Some(identity_key) = peer_identity_key(&conn) else {
        CloseCode::UnknownDevice.close(&conn, "no Ed25519 client certificate was presented");
        return;
    };
    let device = device_id_from_key(&identity_key);
    tracing::Span::current().record("device", tracing::field::display(device));
    if negotiated_alpn(&conn).as_deref() == Some(ENROL_ALPN) {
        enrol(&shared, &conn, device, identity_key).await;
        return;
    }
    // Registered before admission, so that a revocation racing with it closes this one too.
    let _registration = shared.register(device, &conn);
    let ctx = match admit(&shared, device).await {
        Ok(ctx) => Arc::new(ctx),
        Err((code, reason)) => {
            tracing::info!(%code, "connection refused");
            code.close(&conn, &reason);
            return;
        }
    };
    tracing::info!("device connected");
    serve(conn, ctx).await;
}

/// Looks the device up: unknown and revoked devices are refused with their close code.
async fn admit(shared: &Arc<Shared>, device: DeviceId) -> Result<ConnCtx, (CloseCode, String)> {
    let internal = |e: StoreError| {
        tracing::error!(error = %e, "could not look the device up");
        (
            CloseCode::Internal,
            "the server could not check this device; reconnect later".to_owned(),
        )
    };
    let record = match shared.store.touch_device(device, unix_now()).await {
        Ok(record) if record.is_revoked() => {
            return Err((CloseCode::Revoked, revoked_reason(device)));
        }
        Ok(record) => record,
        Err(StoreError::NotFound { .. }) => {
            return Err((CloseCode::UnknownDevice, unknown_reason(device)));
        }
        Err(StoreError::DeviceRevoked { .. }) => {
            return Err((CloseCode::Revoked, revoked_reason(device)));
        }
        Err(e) => return Err(internal(e)),
    };
    let (tenant, account) = names(shared, &record).await.map_err(internal)?;
    // Fetch the policy now, so that requests find it cached. A failure does not refuse the
    // connection: each request asks again, and a blocked account is refused request by request
    // with a clear error.
    if let Err(e) = shared.policies.get(tenant.id, account.id).await {
        tracing::warn!(error = %e, "could not fetch the account's policy");
    }
    Ok(ConnCtx {
        shared: Arc::clone(shared),
        device,
        tenant,
        account,
        subscription: Mutex::new(None),
    })
}

async fn names(
    shared: &Shared,
    record: &crate::store::DeviceRecord,
) -> Result<(TenantRecord, AccountRecord), StoreError> {
    let tenant = shared
        .store
        .tenant(record.tenant)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("tenant {} of device {}", record.tenant, record.device),
        })?;
    let account =
        shared
            .store
            .account(record.account)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("account {} of device {}", record.account, record.device),
            })?;
    Ok((tenant, account))
}

/// Accepts request streams until the connection closes or shutdown begins.
async fn serve(conn: quinn::Connection, ctx: Arc<ConnCtx>) {
    let cancel = ctx.shared.cancel.clone();
    let mut streams = JoinSet::new();
    let shutting_down = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break true,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let span = tracing::debug_span!("stream", id = %send.id());
                    streams.spawn(handlers::serve_stream(Arc::clone(&ctx), send, recv).instrument(span));
                }
                Err(e) => {
                    tracing::info!(reason = %e, "connection closed");
                    break false;
                }
            },
            Some(joined) = streams.join_next(), if !streams.is_empty() => log_join(joined),
        }
    };
    if shutting_down {
        // Requests in flight finish (subscriptions end at once: they watch the same token).
        let drain = async {
            while let Some(joined) = streams.join_next().await {
                log_join(joined);
            }
        };
        if tokio::time::timeout(ctx.shared.grace, drain).await.is_err() {
            tracing::warn!("requests did not finish within the grace period");
        }
        CloseCode::ShuttingDown.close(&conn, SHUTTING_DOWN_REASON);
    }
    streams.shutdown().await;
}

/// An enrolment connection: one `Hello` carrying an [`EnrolRequest`], answered `HelloOk` (the
/// device is now enrolled) or `Error`, then the connection is closed.
async fn enrol(
    shared: &Shared,
    conn: &quinn::Connection,
    device: DeviceId,
    identity_key: [u8; 32],
) {
    let accepted = tokio::select! {
        () = shared.cancel.cancelled() => {
            CloseCode::ShuttingDown.close(conn, SHUTTING_DOWN_REASON);
            return;
        }
        accepted = tokio::time::timeout(ENROL_TIMEOUT, conn.accept_bi()) => accepted,
    };
    let (mut send, recv) = match accepted {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(reason = %e, "enrolment connection closed");
            return;
        }
        Err(_) => {
            CloseCode::ProtocolViolation.close(conn, "no enrolment request was sent");
            return;
        }
    };
    let mut reader = FrameReader::new(recv);
    let answer: Message = match reader.read_frame().await {
        Ok(Some(Message::Request(Request::Hello(hello)))) => {
            match EnrolRequest::from_hello(&hello) {
                Ok(Some(req)) => redeem(shared, device, identity_key, req).await,
                Ok(None) => ErrorResponse::new(
                    ErrorCode::BadRequest,
                    "an enrolment connection (ALPN dooz-enrol/1) must send Hello with an \
                     enrolment request extension",
                )
                .into(),
                Err(e) => ErrorResponse::new(ErrorCode::BadRequest, e.to_string()).into(),
            }
        }
        Ok(Some(other)) => ErrorResponse::new(
            ErrorCode::BadRequest,
            format!(
                "an enrolment connection takes only Hello with an enrolment request, not {}",
                other.name()
            ),
        )
        .into(),
        Ok(None) => {
            ErrorResponse::new(ErrorCode::BadRequest, "the request stream was empty").into()
        }
        Err(e) => match e.to_error_response() {
            Some(err) => err.into(),
            None => {
                tracing::debug!(error = %e, "enrolment stream failed");
                return;
            }
        },
    };
    let enrolled = matches!(
        answer,
        Message::Response(dooz_protocol::Response::HelloOk(_))
    );
    if write_frame(&mut send, &answer).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(ENROL_TIMEOUT, send.stopped()).await;
    }
    let reason = if enrolled {
        "enrolled; connect again with ALPN dooz/1 to sync"
    } else {
        "enrolment failed"
    };
    CloseCode::Done.close(conn, reason);
}

async fn redeem(
    shared: &Shared,
    device: DeviceId,
    identity_key: [u8; 32],
    req: EnrolRequest,
) -> Message {
    let registration = DeviceRegistration {
        device,
        identity_key,
        exchange_key: req.exchange_key,
        name: req.device_name.clone(),
    };
    // Checked and redeemed under one lock, so that two enrolments cannot both take the last
    // place.
    let _creating = shared.policies.creation_lock().await;
    if let Err(refusal) = check_enrolment(shared, device, &req.token).await {
        return refusal;
    }
    let record = match shared
        .store
        .redeem_enrolment(&req.token, registration, unix_now())
        .await
    {
        Ok(record) => {
            tracing::info!(name = %req.device_name, "device enrolled");
            shared.policies.device_enrolled(&record).await;
            record
        }
        // Enrolling again (an answer that was lost, say) is not an error while the device
        // stands.
        Err(StoreError::AlreadyExists { .. }) => match shared.store.device(device).await {
            Ok(Some(record)) if record.is_revoked() => {
                return ErrorResponse::new(ErrorCode::Revoked, revoked_reason(device)).into();
            }
            Ok(Some(record)) => record,
            Ok(None) => return internal_error("enrol the device"),
            Err(e) => {
                tracing::error!(error = %e, "could not look the device up");
                return internal_error("enrol the device");
            }
        },
        Err(e) if matches!(e.to_error_code(), ErrorCode::Internal) => {
            tracing::error!(error = %e, "could not enrol the device");
            return internal_error("enrol the device");
        }
        Err(e) => return ErrorResponse::new(e.to_error_code(), e.to_string()).into(),
    };
    match names(shared, &record).await {
        Ok((tenant, account)) => hello_ok(device, &tenant, &account).into(),
        Err(e) => {
            tracing::error!(error = %e, "could not look the account up");
            internal_error("enrol the device")
        }
    }
}

/// Refuses an enrolment that the account's policy does not allow: a blocked subscription, or
/// a new device past a hard device limit. A device enrolled already is not new.
async fn check_enrolment(shared: &Shared, device: DeviceId, token: &str) -> Result<(), Message> {
    let failed = |e: StoreError| {
        tracing::error!(error = %e, "could not check the account's device limit");
        internal_error("enrol the device")
    };
    if shared.store.device(device).await.map_err(failed)?.is_some() {
        return Ok(());
    }
    // An unknown token: redeeming it says why.
    let Some((tenant, account)) = shared
        .store
        .enrolment_token_account(token)
        .await
        .map_err(failed)?
    else {
        return Ok(());
    };
    let policy = shared.policies.get(tenant, account).await.map_err(failed)?;
    if policy.access == Access::Blocked {
        return Err(ErrorResponse::new(
            ErrorCode::SubscriptionInactive,
            "the account's subscription is not active: no device can be enrolled until the \
             operator reactivates it",
        )
        .into());
    }
    if policy.limits.devices.is_some() {
        let usage = shared.store.account_usage(account).await.map_err(failed)?;
        check_limit(
            policy.limits.devices,
            Resource::Devices,
            usage.devices,
            1,
            account,
        )
        .map_err(|(code, message)| Message::from(ErrorResponse::new(code, message)))?;
    }
    Ok(())
}

pub(crate) fn internal_error(what: &str) -> Message {
    ErrorResponse::new(
        ErrorCode::Internal,
        format!("the server could not {what}; try again later"),
    )
    .into()
}
