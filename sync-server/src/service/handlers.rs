//! One request stream: read the request, dispatch it, write the answer, finish.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use dooz_protocol::limits::{MAX_CHUNK_LEN, MAX_VAULTS};
use dooz_protocol::{
    Ack, Changed, Changes, ChunkData, ChunkId, ChunkStored, Commit, CommitResult, Committed,
    CreateVault, Envelopes, ErrorCode, ErrorResponse, GetChunk, GetEnvelopes, Have, Hello, History,
    HistoryPage, Message, Missing, Pull, PutChunk, PutEnvelope, Request, Subscribe, Subscribed,
    VaultCreated, VaultId, Vaults, encoded_len,
};
use dooz_storage::{BlobKey, BlobMeta};
use quinn::{RecvStream, SendStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use crate::frame_io::{FrameIoError, FrameReader, write_frame, write_frame_with_body};
use crate::policy::AccountPolicy;
use crate::service::connection::{ConnCtx, internal_error};
use crate::service::quota::{Kind, Reservation, check_access, check_limit};
use crate::service::{VaultOwner, pack, unix_now};
use crate::service::{recovery, rotation};
use crate::store::{
    ChunkLocation, ChunkState, HOUR_SECS, StoreError, TenantId, TrafficCounts, TrafficKey,
};

/// A successful answer: the response, the raw body that follows it (`ChunkData`), and the
/// in-flight permit held until it is written.
struct Reply {
    msg: Message,
    body: Option<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Metered already, with the operation (an upload counted with its chunk record).
    counted: bool,
}

impl Reply {
    fn new(msg: impl Into<Message>) -> Self {
        Self {
            msg: msg.into(),
            body: None,
            _permit: None,
            counted: false,
        }
    }
}

/// A failed request.
enum Fail {
    /// Answer with this error.
    Respond(ErrorResponse),
    /// The stream or connection is gone; nothing can be answered.
    Transport(FrameIoError),
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Respond(ErrorResponse::new(code, message))
    }

    /// A store failure: internal ones are logged and answered without details.
    fn store(e: StoreError, what: &str) -> Self {
        match e.to_error_code() {
            ErrorCode::Internal => {
                tracing::error!(error = %e, "could not {what}");
                Self::Respond(ErrorResponse::new(
                    ErrorCode::Internal,
                    format!("the server could not {what}; try again later"),
                ))
            }
            code => Self::new(code, e.to_string()),
        }
    }

    fn internal(what: &str) -> Self {
        Self::new(
            ErrorCode::Internal,
            format!("the server could not {what}; try again later"),
        )
    }
}

impl From<(ErrorCode, String)> for Fail {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Self::new(code, message)
    }
}

impl From<FrameIoError> for Fail {
    fn from(e: FrameIoError) -> Self {
        match e.to_error_response() {
            Some(err) => Self::Respond(err),
            None => Self::Transport(e),
        }
    }
}

type Handled = Result<Reply, Fail>;

/// Serves one request stream to the end.
pub(crate) async fn serve_stream(ctx: Arc<ConnCtx>, mut send: SendStream, recv: RecvStream) {
    let mut reader = FrameReader::new(recv).with_max_frame_len(ctx.shared.limits.max_frame_len);
    let request = match reader.read_frame().await {
        Ok(Some(Message::Request(request))) => request,
        Ok(Some(Message::Response(response))) => {
            let err = ErrorResponse::new(
                ErrorCode::BadRequest,
                format!(
                    "received {} ({:#06x}), a response, where a request was expected",
                    response.name(),
                    response.type_id()
                ),
            );
            send_final(&mut send, err.into(), None).await;
            return;
        }
        Ok(None) => {
            let _ = send.finish();
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "unreadable request");
            if let Some(err) = e.to_error_response() {
                send_final(&mut send, err.into(), None).await;
            }
            return;
        }
    };
    let name = request.name();
    tracing::debug!(request = name, "request");
    let metered = Metered {
        request_len: reader.last_frame_len() as u64,
        vault: request.vault(),
        body_len: match &request {
            Request::PutChunk(put) => u64::from(put.len),
            _ => 0,
        },
    };
    let kind = match &request {
        Request::PutChunk(_)
        | Request::Commit(_)
        | Request::CreateVault(_)
        | Request::PutEnvelope(_) => Kind::Write,
        _ => Kind::Read,
    };
    if let Err(fail) = allowed(&ctx, kind).await {
        if let Fail::Respond(err) = fail {
            tracing::debug!(request = name, code = %err.code, "request refused by the account's policy");
            answer(&ctx, &mut send, &metered, false, err.into(), None).await;
        }
        return;
    }
    let handled = match request {
        Request::Subscribe(req) => {
            subscribe(&ctx, req, &mut send, &metered).await;
            return;
        }
        Request::Hello(req) => hello(&ctx, &req),
        Request::CreateVault(req) => create_vault(&ctx, req).await,
        Request::ListVaults(_) => match list_vaults(&ctx).await {
            Ok(mut reply) => {
                rotation::annotate(ctx.shared.store.as_ref(), ctx.account.id, &mut reply.msg)
                    .await
                    .map_err(|e| Fail::store(e, "list the vaults"))
                    .map(|()| reply)
            }
            Err(e) => Err(e),
        },
        Request::PutEnvelope(req) if recovery::is_put(&req) => recovery::put(&ctx, req)
            .await
            .map(Reply::new)
            .map_err(Fail::Respond),
        Request::GetEnvelopes(req) if recovery::is_get(&req) => recovery::get(&ctx, req)
            .await
            .map(Reply::new)
            .map_err(Fail::Respond),
        Request::PutEnvelope(req) => put_envelope(&ctx, req).await,
        Request::GetEnvelopes(req) => get_envelopes(&ctx, req).await,
        Request::Have(req) => have(&ctx, req).await,
        Request::PutChunk(req) => put_chunk(&ctx, req, &mut reader).await,
        Request::GetChunk(req) => get_chunk(&ctx, req).await,
        Request::Commit(req) => commit(&ctx, req).await,
        Request::Pull(req) => pull(&ctx, req).await,
        Request::History(req) => history(&ctx, req).await,
        pairing @ (Request::PairingOpen(_)
        | Request::PairingPost(_)
        | Request::PairingTake(_)
        | Request::PairingReply(_)
        | Request::PairingAwaitReply(_)) => pairing_call(&ctx, pairing).await,
    };
    match handled {
        Ok(reply) if reply.counted => send_final(&mut send, reply.msg, reply.body).await,
        Ok(reply) => answer(&ctx, &mut send, &metered, true, reply.msg, reply.body).await,
        Err(Fail::Respond(err)) => {
            tracing::debug!(request = name, code = %err.code, message = %err.message, "request failed");
            answer(&ctx, &mut send, &metered, false, err.into(), None).await;
        }
        Err(Fail::Transport(e)) => tracing::debug!(request = name, error = %e, "stream failed"),
    }
}

/// What metering needs of a request (docs/METERING.md).
struct Metered {
    /// Bytes of its frame.
    request_len: u64,
    /// The vault it names, if any.
    vault: Option<VaultId>,
    /// Its raw body (`PutChunk`), counted when the chunk was stored.
    body_len: u64,
}

/// Counts traffic of the calling device under `vault` (only if the account owns it: a request
/// naming another account's vault, or none, is counted under no vault) and returns once the
/// count is durable.
async fn meter(
    ctx: &ConnCtx,
    vault: Option<VaultId>,
    owned: bool,
    counts: TrafficCounts,
) -> Result<(), String> {
    let vault = match vault {
        Some(v) if owned => Some(v),
        Some(v) => match ctx.shared.store.vault(v).await {
            Ok(Some(record)) if record.account == ctx.account.id => Some(v),
            Ok(_) => None,
            Err(e) => return Err(e.to_string()),
        },
        None => None,
    };
    let key = TrafficKey {
        tenant: ctx.tenant.id,
        hour: unix_now() / HOUR_SECS,
        account: ctx.account.id,
        vault,
        device: Some(ctx.device),
    };
    ctx.shared.meter.record(key, counts).await
}

/// Meters the request and its answer, then sends the answer. `ok`: the request succeeded (so
/// the vault it names is the account's). An answer that cannot be metered is not sent: the
/// device gets an internal error instead, which is not counted.
async fn answer(
    ctx: &ConnCtx,
    send: &mut SendStream,
    metered: &Metered,
    ok: bool,
    msg: Message,
    body: Option<Bytes>,
) {
    let stored = matches!(
        msg,
        Message::Response(dooz_protocol::Response::ChunkStored(_))
    );
    let counts = TrafficCounts {
        ingress_bytes: metered.request_len + if stored { metered.body_len } else { 0 },
        egress_bytes: (encoded_len(&msg) + body.as_ref().map_or(0, Bytes::len)) as u64,
        requests: 1,
    };
    if let Err(e) = meter(ctx, metered.vault, ok, counts).await {
        tracing::error!(error = %e, "could not meter a request; answering an internal error");
        send_final(send, internal_error("count the request"), None).await;
        return;
    }
    send_final(send, msg, body).await;
}

/// A pairing slot call (`service::pairing`).
async fn pairing_call(ctx: &ConnCtx, request: Request) -> Handled {
    let shared = &ctx.shared;
    match shared
        .pairing
        .serve(ctx.account.id, ctx.device, request, &shared.cancel)
        .await
    {
        Some(answer) => answer.map(Reply::new).map_err(Fail::Respond),
        None => Err(Fail::internal("route the pairing call")),
    }
}

/// Writes the answer (and raw body), finishes the stream and waits until the peer has it all,
/// so that a shutdown does not cut it off.
async fn send_final(send: &mut SendStream, msg: Message, body: Option<Bytes>) {
    let written = match body {
        Some(body) => write_frame_with_body(send, &msg, body).await,
        None => write_frame(send, &msg).await,
    };
    let written = match written {
        Err(FrameIoError::Encode(e)) => {
            tracing::error!(error = %e, "could not encode an answer");
            write_frame(send, &internal_error("encode its answer")).await
        }
        other => other,
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not write the answer");
        return;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// The account's policy (cached for up to a second).
async fn policy(ctx: &ConnCtx) -> Result<AccountPolicy, Fail> {
    ctx.shared
        .policies
        .get(ctx.tenant.id, ctx.account.id)
        .await
        .map_err(|e| Fail::store(e, "check the account's subscription"))
}

/// Refuses a request that the account's subscription does not allow.
async fn allowed(ctx: &ConnCtx, kind: Kind) -> Result<(), Fail> {
    check_access(&policy(ctx).await?, kind).map_err(Fail::from)
}

/// The vault's owner, if the calling device's account owns it.
///
/// A vault's tenant and account never change, so owners are cached per instance
/// ([`Shared::vault_owners`](super::Shared)): with PostgreSQL a store read is a round trip,
/// and every request about a vault asks. A cached owner that is not the caller's account is
/// read again (an account deleted, and the vault id made again by another one).
async fn own_vault(ctx: &ConnCtx, vault: VaultId) -> Result<VaultOwner, Fail> {
    if let Some(owner) = ctx.shared.vault_owner(vault)
        && owner.account == ctx.account.id
    {
        return Ok(owner);
    }
    match ctx.shared.store.vault(vault).await {
        Ok(Some(record)) => {
            let owner = VaultOwner {
                tenant: record.tenant,
                account: record.account,
            };
            ctx.shared.remember_vault_owner(vault, owner);
            if owner.account == ctx.account.id {
                Ok(owner)
            } else {
                Err(vault_not_found(vault))
            }
        }
        Ok(None) => Err(vault_not_found(vault)),
        Err(e) => Err(Fail::store(e, "look the vault up")),
    }
}

fn vault_not_found(vault: VaultId) -> Fail {
    Fail::new(
        ErrorCode::NotFound,
        format!(
            "vault {vault:#} not found in this account: check the id, or create it with \
             CreateVault"
        ),
    )
}

/// Where a chunk's blob lives: `<tenant>/<vault>/chunks/<2 hex>/<hex id>`.
fn chunk_key(tenant: TenantId, vault: VaultId, chunk: ChunkId) -> Result<BlobKey, Fail> {
    pack::chunk_blob_key(tenant, vault, chunk).map_err(|e| {
        tracing::error!(error = %e, "bad chunk key");
        Fail::internal("name the chunk's blob")
    })
}

fn hello(ctx: &ConnCtx, req: &Hello) -> Handled {
    if req.protocol_version == 0 {
        return Err(Fail::new(
            ErrorCode::Unsupported,
            "protocol revision 0 does not exist; dooz/1 starts at revision 1: upgrade the client",
        ));
    }
    tracing::debug!(
        client = %req.client_name,
        version = %req.client_version,
        revision = req.protocol_version,
        "hello"
    );
    Ok(Reply::new(ctx.hello_ok()))
}

async fn create_vault(ctx: &ConnCtx, req: CreateVault) -> Handled {
    let policy = policy(ctx).await?;
    // Checked and created under one lock, so that two new vaults cannot both take the last
    // place. An existing vault of the account is not new and costs nothing.
    let _creating = match policy.limits.vaults {
        Some(limit) => {
            let lock = ctx.shared.policies.creation_lock().await;
            let existing = ctx
                .shared
                .store
                .vault(req.vault)
                .await
                .map_err(|e| Fail::store(e, "look the vault up"))?;
            if existing.is_none() {
                let usage = ctx
                    .shared
                    .store
                    .account_usage(ctx.account.id)
                    .await
                    .map_err(|e| Fail::store(e, "count the account's vaults"))?;
                check_limit(
                    Some(limit),
                    dooz_protocol::Resource::Vaults,
                    usage.vaults,
                    1,
                    ctx.account.id,
                )?;
            }
            Some(lock)
        }
        None => None,
    };
    ctx.shared
        .store
        .create_vault(ctx.account.id, req.vault, unix_now())
        .await
        .map_err(|e| Fail::store(e, "create the vault"))?;
    Ok(Reply::new(VaultCreated {
        vault: req.vault,
        ext: Default::default(),
    }))
}

async fn list_vaults(ctx: &ConnCtx) -> Handled {
    let mut vaults = ctx
        .shared
        .store
        .list_vaults(ctx.account.id)
        .await
        .map_err(|e| Fail::store(e, "list the vaults"))?;
    if vaults.len() > MAX_VAULTS {
        tracing::warn!(
            count = vaults.len(),
            "account has more vaults than one answer holds"
        );
        vaults.truncate(MAX_VAULTS);
    }
    Ok(Reply::new(Vaults {
        vaults,
        ext: Default::default(),
    }))
}

async fn put_envelope(ctx: &ConnCtx, req: PutEnvelope) -> Handled {
    own_vault(ctx, req.vault).await?;
    let recipient = ctx
        .shared
        .store
        .device(req.recipient)
        .await
        .map_err(|e| Fail::store(e, "look the recipient up"))?;
    if let Some(r) = &recipient
        && r.account == ctx.account.id
        && r.is_revoked()
    {
        return Err(Fail::new(
            ErrorCode::NotFound,
            format!(
                "device {:#} was revoked; vault keys are not wrapped to revoked devices",
                req.recipient
            ),
        ));
    }
    if recipient.is_none_or(|r| r.account != ctx.account.id) {
        return Err(Fail::new(
            ErrorCode::NotFound,
            format!(
                "device {:#} is not a device of this account; wrap vault keys only to the \
                 account's devices",
                req.recipient
            ),
        ));
    }
    let store = &ctx.shared.store;
    let stored = if rotation::is_new_epoch(&req) {
        if req.recipient != ctx.device {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                "a new epoch starts with the envelope a device wraps to itself".to_owned(),
            ));
        }
        store
            .start_epoch(req.vault, req.epoch, ctx.device, req.envelope)
            .await
    } else {
        store
            .put_envelope(
                req.vault,
                req.epoch,
                req.recipient,
                ctx.device,
                req.envelope,
            )
            .await
    };
    stored.map_err(|e| Fail::store(e, "store the envelope"))?;
    Ok(Reply::new(Ack::default()))
}

async fn get_envelopes(ctx: &ConnCtx, req: GetEnvelopes) -> Handled {
    own_vault(ctx, req.vault).await?;
    let envelopes = ctx
        .shared
        .store
        .envelopes_for(req.vault, ctx.device)
        .await
        .map_err(|e| Fail::store(e, "read the envelopes"))?;
    Ok(Reply::new(Envelopes {
        envelopes,
        ext: Default::default(),
    }))
}

async fn have(ctx: &ConnCtx, req: Have) -> Handled {
    own_vault(ctx, req.vault).await?;
    let missing = ctx
        .shared
        .store
        .missing_chunks(req.vault, &req.chunks)
        .await
        .map_err(|e| Fail::store(e, "check the chunks"))?;
    // Chunks in packs not written yet count as stored: the commit that names them waits.
    let chunks = ctx.shared.packer.not_held(req.vault, missing);
    Ok(Reply::new(Missing {
        chunks,
        ext: Default::default(),
    }))
}

async fn acquire(ctx: &ConnCtx, bytes: u64) -> Result<OwnedSemaphorePermit, Fail> {
    // Chunk lengths are at most MAX_CHUNK_LEN (16 MiB), well within u32.
    let permits = u32::try_from(bytes.clamp(1, u64::from(MAX_CHUNK_LEN))).unwrap_or(MAX_CHUNK_LEN);
    Arc::clone(&ctx.shared.inflight)
        .acquire_many_owned(permits)
        .await
        .map_err(|_| Fail::internal("reserve memory for the chunk"))
}

async fn put_chunk(ctx: &ConnCtx, req: PutChunk, reader: &mut FrameReader) -> Handled {
    let vault = own_vault(ctx, req.vault).await?;
    // The decoder checked `len` against MAX_CHUNK_LEN. The quota is checked before a byte of
    // the body is read; the reservation lasts until the chunk is recorded.
    let reservation = reserve_storage(ctx, &req).await?;
    let _permit = acquire(ctx, u64::from(req.len)).await?;
    let body = reader.read_raw_body(req.len).await?;
    reader.expect_end("raw chunk body").await?;
    if body.blake3 != req.blake3 {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            format!(
                "chunk {:#}: the BLAKE3 of the {} bytes received is {}, but the PutChunk header \
                 says {}; nothing was stored. The chunk was damaged on the way or sealed \
                 wrongly: seal it again and upload it again",
                req.chunk,
                body.bytes.len(),
                blake3::Hash::from(body.blake3).to_hex(),
                blake3::Hash::from(req.blake3).to_hex(),
            ),
        ));
    }
    let store = &ctx.shared.store;
    let _lock = ctx.shared.upload_lock(&req.chunk).lock().await;
    let existing = store
        .chunk(req.vault, req.chunk)
        .await
        .map_err(|e| Fail::store(e, "look the chunk up"))?;
    let keep = match &existing {
        // A committed chunk's blob is never overwritten.
        Some(record) if matches!(record.state, ChunkState::Committed { .. }) => true,
        // The same sealed bytes are already there.
        Some(record) => record.blake3 == req.blake3,
        None => false,
    };
    // A stored upload is metered with its chunk record, in the same transaction
    // (docs/METERING.md); one that stores nothing is metered like any other request.
    let stored: Message = ChunkStored {
        chunk: req.chunk,
        ext: Default::default(),
    }
    .into();
    let traffic = (
        TrafficKey {
            tenant: ctx.tenant.id,
            hour: unix_now() / HOUR_SECS,
            account: ctx.account.id,
            vault: Some(req.vault),
            device: Some(ctx.device),
        },
        TrafficCounts {
            ingress_bytes: reader.last_frame_len() as u64 + u64::from(req.len),
            egress_bytes: encoded_len(&stored) as u64,
            requests: 1,
        },
    );
    let metering = ctx.shared.meter.enabled();
    let mut counted = false;
    if !keep && ctx.shared.packer.packs(req.len) {
        // Into the vault's open pack; recorded once the pack is written (see `service::pack`).
        let added = ctx
            .shared
            .packer
            .add(
                req.vault,
                vault.tenant,
                req.chunk,
                &body.bytes,
                req.blake3,
                reservation,
                metering.then_some(traffic),
            )
            .map_err(|e| {
                tracing::error!(error = %e, "no randomness for a pack id");
                Fail::internal("open a pack")
            })?;
        if let pack::Added::Packed(job) = added {
            counted = true;
            if let Some(job) = job {
                ctx.shared.spawn_seal(*job);
            }
        }
    } else if !keep {
        let key = chunk_key(vault.tenant, req.vault, req.chunk)?;
        // Durable when a commit first references it (see `commit`).
        ctx.shared
            .blobs
            .put_unsynced(&key, body.bytes)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, %key, "could not store a chunk");
                Fail::internal("store the chunk")
            })?;
        store
            .record_chunk_metered(
                req.vault,
                req.chunk,
                u64::from(req.len),
                req.blake3,
                unix_now(),
                if metering { vec![traffic] } else { Vec::new() },
            )
            .await
            .map_err(|e| Fail::store(e, "record the chunk"))?;
        counted = true;
    }
    let mut reply = Reply::new(stored);
    reply.counted = counted && metering;
    if reply.counted {
        ctx.shared.meter.note(&traffic.1);
    }
    Ok(reply)
}

/// Checks the upload against the account's storage limit and reserves its cost: its sealed
/// length, or nothing when the vault holds the chunk already (a pending chunk sealed again
/// costs only what it grows by).
async fn reserve_storage(ctx: &ConnCtx, req: &PutChunk) -> Result<Option<Reservation>, Fail> {
    let Some(limit) = policy(ctx).await?.limits.storage_bytes else {
        return Ok(None);
    };
    let store = &ctx.shared.store;
    let len = u64::from(req.len);
    let existing = store
        .chunk(req.vault, req.chunk)
        .await
        .map_err(|e| Fail::store(e, "look the chunk up"))?;
    let cost = match existing {
        // In a pack not written yet: `put_chunk` keeps the bytes it has.
        None if ctx.shared.packer.holds(req.vault, &req.chunk) => 0,
        None => len,
        Some(record) if matches!(record.state, ChunkState::Committed { .. }) => 0,
        Some(record) if record.blake3 == req.blake3 => 0,
        Some(record) => len.saturating_sub(record.sealed_len),
    };
    if cost == 0 {
        return Ok(None);
    }
    // Reserve first, then read the stored bytes: an upload that finishes in between is then
    // counted (perhaps twice, never not at all).
    let (reservation, others) = ctx.shared.policies.reserve(ctx.account.id, cost);
    let stored = store
        .account_usage(ctx.account.id)
        .await
        .map_err(|e| Fail::store(e, "check the account's storage"))?
        .stored_bytes;
    check_limit(
        Some(limit),
        dooz_protocol::Resource::StorageBytes,
        stored.saturating_add(others),
        cost,
        ctx.account.id,
    )?;
    Ok(Some(reservation))
}

async fn get_chunk(ctx: &ConnCtx, req: GetChunk) -> Handled {
    let vault = own_vault(ctx, req.vault).await?;
    let record = ctx
        .shared
        .store
        .chunk(req.vault, req.chunk)
        .await
        .map_err(|e| Fail::store(e, "look the chunk up"))?
        .ok_or_else(|| {
            Fail::new(
                ErrorCode::NotFound,
                format!("vault {:#} has no chunk {:#}", req.vault, req.chunk),
            )
        })?;
    let permit = acquire(ctx, record.sealed_len).await?;
    let (key, bytes) = match record.location {
        ChunkLocation::Blob => {
            let key = chunk_key(vault.tenant, req.vault, req.chunk)?;
            let bytes = ctx.shared.blobs.get(&key).await;
            (key, bytes)
        }
        ChunkLocation::Packed { pack, offset } => {
            let key = pack::pack_key(vault.tenant, req.vault, pack).map_err(|e| {
                tracing::error!(error = %e, "bad pack key");
                Fail::internal("name the chunk's pack")
            })?;
            let end = offset.saturating_add(record.sealed_len);
            let bytes = ctx.shared.blobs.get_range(&key, offset..end).await;
            (key, bytes)
        }
    };
    let bytes = bytes.map_err(|e| {
        tracing::error!(error = %e, %key, "could not read a recorded chunk");
        Fail::internal("read the chunk")
    })?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&len| len <= MAX_CHUNK_LEN)
        .ok_or_else(|| {
            tracing::error!(%key, len = bytes.len(), "stored chunk is over the chunk limit");
            Fail::internal("read the chunk")
        })?;
    // The hash recorded at upload, not one of the bytes read: a blob damaged at rest then
    // fails the client's check.
    Ok(Reply {
        msg: ChunkData {
            len,
            blake3: record.blake3,
            ext: Default::default(),
        }
        .into(),
        body: Some(bytes),
        _permit: Some(permit),
        counted: false,
    })
}

async fn commit(ctx: &ConnCtx, req: Commit) -> Handled {
    let vault = own_vault(ctx, req.vault).await?;
    seal_packs(ctx, &req).await;
    sync_pending_chunks(ctx, vault.tenant, &req).await?;
    let results = ctx
        .shared
        .store
        .commit(req.vault, ctx.device, req.entries, unix_now())
        .await
        .map_err(|e| Fail::store(e, "commit"))?;
    let head = results
        .iter()
        .filter_map(|r| match r {
            CommitResult::Applied { seq, .. } => Some(*seq),
            CommitResult::Conflict { .. } => None,
        })
        .max();
    if let Some(seq) = head {
        ctx.shared.announce(req.vault, seq);
    }
    Ok(Reply::new(Committed {
        results,
        ext: Default::default(),
    }))
}

/// Writes the packs that hold chunks `req` names and are not written yet, and waits for them,
/// so that the commit finds those chunks recorded (or, if a pack failed, missing).
async fn seal_packs(ctx: &ConnCtx, req: &Commit) {
    let ids: Vec<ChunkId> = req
        .entries
        .iter()
        .flat_map(|e| e.chunks.iter().copied())
        .collect();
    let (job, wait) = ctx.shared.packer.seal_for(req.vault, &ids);
    if let Some(job) = job {
        ctx.shared.spawn_seal(job);
    }
    wait.wait().await;
}

/// Makes the blobs of the pending chunks that `req` references durable before the commit that
/// makes them count is. `PutChunk` stores blobs unsynced (one `fsync` per 16–22 KB chunk made
/// uploads disk-bound; see benches/RESULTS.md), so a crash can lose a blob whose record sled
/// had already flushed: such a record is forgotten here, and the commit then fails with
/// `MissingChunks` so that the device uploads the chunk again.
async fn sync_pending_chunks(ctx: &ConnCtx, tenant: TenantId, req: &Commit) -> Result<(), Fail> {
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<ChunkId> = req
        .entries
        .iter()
        .flat_map(|e| e.chunks.iter().copied())
        .filter(|c| seen.insert(*c))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let store = &ctx.shared.store;
    let records = store
        .chunks(req.vault, &ids)
        .await
        .map_err(|e| Fail::store(e, "look the chunks up"))?;
    let mut pending = Vec::new();
    let mut by_key = std::collections::HashMap::new();
    for (id, record) in ids.iter().zip(records) {
        // Packed chunks were written durably before they were recorded.
        if let Some(record) = record
            && matches!(record.state, ChunkState::Pending { .. })
            && record.location == ChunkLocation::Blob
        {
            let key = chunk_key(tenant, req.vault, *id)?;
            by_key.insert(key.clone(), *id);
            pending.push(BlobMeta {
                key,
                size: record.sealed_len,
            });
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let lost = ctx.shared.blobs.sync(&pending).await.map_err(|e| {
        tracing::error!(error = %e, "could not sync chunk blobs");
        Fail::internal("make the chunks durable")
    })?;
    for key in lost {
        if let Some(id) = by_key.get(&key) {
            tracing::warn!(chunk = %id, "a chunk blob was lost before it was synced; forgetting it");
            store
                .forget_chunk(req.vault, *id, unix_now())
                .await
                .map_err(|e| Fail::store(e, "forget a lost chunk"))?;
        }
    }
    Ok(())
}

async fn pull(ctx: &ConnCtx, req: Pull) -> Handled {
    own_vault(ctx, req.vault).await?;
    let page = ctx
        .shared
        .store
        .pull(req.vault, req.since, req.limit)
        .await
        .map_err(|e| Fail::store(e, "read the log"))?;
    Ok(Reply::new(Changes {
        changes: page.changes,
        next: page.next,
        more: page.more,
        ext: Default::default(),
    }))
}

async fn history(ctx: &ConnCtx, req: History) -> Handled {
    own_vault(ctx, req.vault).await?;
    let page = ctx
        .shared
        .store
        .history(req.vault, req.entry, req.limit, req.before)
        .await
        .map_err(|e| Fail::store(e, "read the history"))?;
    Ok(Reply::new(HistoryPage {
        versions: page.versions,
        next: page.next,
        ext: Default::default(),
    }))
}

/// `Subscribe`: answers `Subscribed`, then writes `Changed` frames on the same stream until the
/// subscription is replaced, the client stops the stream, the connection closes or the server
/// shuts down.
async fn subscribe(ctx: &ConnCtx, req: Subscribe, send: &mut SendStream, metered: &Metered) {
    let owned = match ctx.shared.store.list_vaults(ctx.account.id).await {
        Ok(vaults) => vaults.into_iter().map(|v| v.vault).collect::<HashSet<_>>(),
        Err(e) => {
            if let Fail::Respond(err) = Fail::store(e, "list the vaults") {
                answer(ctx, send, metered, false, err.into(), None).await;
            }
            return;
        }
    };
    if let Some(vault) = req.vaults.iter().find(|v| !owned.contains(v)) {
        let err = ErrorResponse::new(
            ErrorCode::NotFound,
            format!(
                "vault {vault:#} not found in this account; nothing was subscribed (the previous \
                 subscription, if any, stands)"
            ),
        );
        answer(ctx, send, metered, false, err.into(), None).await;
        return;
    }
    let wanted: HashSet<VaultId> = req.vaults.into_iter().collect();
    // Listen before answering, so that no commit falls between `Subscribed` and the client's
    // pull.
    let mut changes = ctx.shared.changes.subscribe();
    let token = ctx.shared.cancel.child_token();
    let previous = ctx
        .subscription
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(token.clone());
    if let Some(previous) = previous {
        previous.cancel();
    }
    let subscribed: Message = Subscribed::default().into();
    let counts = TrafficCounts {
        ingress_bytes: metered.request_len,
        egress_bytes: encoded_len(&subscribed) as u64,
        requests: 1,
    };
    if let Err(e) = meter(ctx, None, false, counts).await {
        tracing::error!(error = %e, "could not meter a subscription");
        send_final(send, internal_error("count the request"), None).await;
        return;
    }
    if let Err(e) = write_frame(send, &subscribed).await {
        tracing::debug!(error = %e, "subscription stream failed");
        return;
    }
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let received = tokio::select! {
            () = token.cancelled() => break,
            _ = &mut stopped => return,
            received = changes.recv() => received,
        };
        let pushes = match received {
            Ok((vault, seq)) if wanted.contains(&vault) => vec![(vault, seq)],
            Ok(_) => continue,
            // Fell behind: tell the current head of every subscribed vault instead.
            Err(RecvError::Lagged(_)) => {
                let mut heads = Vec::with_capacity(wanted.len());
                for &vault in &wanted {
                    match ctx.shared.store.head(vault).await {
                        Ok(seq) => heads.push((vault, seq)),
                        Err(e) => tracing::warn!(error = %e, %vault, "could not read a vault head"),
                    }
                }
                heads
            }
            Err(RecvError::Closed) => break,
        };
        for (vault, seq) in pushes {
            let changed: Message = Changed {
                vault,
                seq,
                ext: Default::default(),
            }
            .into();
            let counts = TrafficCounts {
                ingress_bytes: 0,
                egress_bytes: encoded_len(&changed) as u64,
                requests: 0,
            };
            if let Err(e) = meter(ctx, Some(vault), true, counts).await {
                tracing::error!(error = %e, "could not meter a change notification");
                return;
            }
            if let Err(e) = write_frame(send, &changed).await {
                tracing::debug!(error = %e, "subscription stream failed");
                return;
            }
        }
    }
    let _ = send.finish();
    let _ = stopped.await;
}
