//! Pairing slots: the server's half of pairing, a one-use mailbox per pairing code.
//!
//! # Goals
//!
//! - Carry two opaque payloads between two devices of one account: the joiner's post (its
//!   public keys, MACed with a key the server does not know) and the initiator's reply.
//! - A slot is named `H(s)` by the initiator (`PairingOpen`), lives at most
//!   [`MAX_PAIRING_SLOT_SECS`] (15 minutes), takes one post and one reply, and is then used up.
//! - Slots are scoped to the account: a device of another account sees no slot.
//! - Each refusal says why, for people (the message) and programs ([`SlotRefusal`]): unknown,
//!   expired, used.
//! - Bounded: at most [`MAX_SLOTS_PER_ACCOUNT`] slots (open or remembered) per account.
//!
//! # Non-goals
//!
//! - Durability: slots live in memory. A server restart forgets them and devices start the
//!   pairing again with a new code (a pairing takes a minute; losing one costs nothing).
//! - Several server instances: both devices must reach the same instance.
//! - Judging the payloads: the server cannot check them; the devices do (see `dooz-crypto`'s
//!   `pairing` module).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dooz_protocol::limits::MAX_PAIRING_SLOT_SECS;
use dooz_protocol::{
    Ack, DeviceId, ErrorCode, ErrorResponse, PairingPayload, Request, Response, SlotId, SlotRefusal,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::AccountId;

/// Slots (live or remembered as expired/used) one account may have at once.
pub(crate) const MAX_SLOTS_PER_ACCOUNT: usize = 16;

/// How long a used or expired slot is remembered, so that a late device hears "expired" or
/// "used" rather than "unknown".
const REMEMBER_SECS: u64 = 60 * 60;

#[derive(Debug)]
enum State {
    Open,
    Posted { poster: DeviceId, payload: Vec<u8> },
    Taken { poster: DeviceId },
    Replied { poster: DeviceId, payload: Vec<u8> },
    Done,
}

#[derive(Debug)]
struct Slot {
    opener: DeviceId,
    expires_at: u64,
    state: State,
}

/// Every account's pairing slots, in memory.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    slots: Mutex<HashMap<(AccountId, SlotId), Slot>>,
    changed: Notify,
    /// Seconds added to the clock (tests move time forward with it).
    skew: AtomicU64,
}

/// The answer to one pairing call.
pub(crate) type Answer = Result<Response, ErrorResponse>;

fn refused(refusal: SlotRefusal) -> ErrorResponse {
    let message = match refusal {
        SlotRefusal::Expired => {
            "this pairing code has expired (codes work for 15 minutes): run `dooz pair invite` \
             again on the device that has the vaults and use the new code"
        }
        SlotRefusal::Used => {
            "this pairing code was used already (a code works once): run `dooz pair invite` \
             again on the device that has the vaults and use the new code"
        }
        _ => {
            "no pairing is waiting for this code in this account: check that the code was typed \
             right, that the inviting device still shows it, and that both devices are enrolled \
             in the same account"
        }
    };
    let mut err = ErrorResponse::new(ErrorCode::NotFound, message);
    err.ext.push(refusal.to_extension());
    err
}

fn bad(message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::new(ErrorCode::BadRequest, message)
}

fn ack() -> Response {
    Response::Ok(Ack::default())
}

fn payload(payload: Vec<u8>) -> Response {
    Response::PairingPayload(PairingPayload {
        payload,
        ext: Default::default(),
    })
}

/// What a waiting call found.
enum Step {
    Ready(Answer),
    Wait { until: u64 },
}

impl Slots {
    /// Unix seconds now, plus the test skew.
    fn now(&self) -> u64 {
        super::unix_now().saturating_add(self.skew.load(Ordering::Relaxed))
    }

    /// Moves this service's clock forward by `secs` (tests of expiry).
    pub(crate) fn advance_clock(&self, secs: u64) {
        self.skew.fetch_add(secs, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(AccountId, SlotId), Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves one pairing request of `device` (account `account`); `None` if `request` is not a
    /// pairing call.
    pub(crate) async fn serve(
        &self,
        account: AccountId,
        device: DeviceId,
        request: Request,
        cancel: &CancellationToken,
    ) -> Option<Answer> {
        Some(match request {
            Request::PairingOpen(req) => self.open(account, device, req.slot, req.expires_in_secs),
            Request::PairingPost(req) => self.post(account, device, req.slot, req.payload),
            Request::PairingTake(req) => {
                self.wait(cancel, || self.take_step(account, device, req.slot))
                    .await
            }
            Request::PairingReply(req) => self.reply(account, device, req.slot, req.payload),
            Request::PairingAwaitReply(req) => {
                self.wait(cancel, || self.await_step(account, device, req.slot))
                    .await
            }
            _ => return None,
        })
    }

    fn open(&self, account: AccountId, device: DeviceId, slot: SlotId, secs: u32) -> Answer {
        let now = self.now();
        let secs = secs.clamp(1, MAX_PAIRING_SLOT_SECS);
        let mut slots = self.lock();
        slots.retain(|_, s| s.expires_at.saturating_add(REMEMBER_SECS) > now);
        if slots.contains_key(&(account, slot)) {
            return Err(ErrorResponse::new(
                ErrorCode::AlreadyExists,
                "this pairing slot exists already: make a new pairing code",
            ));
        }
        let of_account = slots.keys().filter(|(a, _)| *a == account).count();
        if of_account >= MAX_SLOTS_PER_ACCOUNT {
            return Err(ErrorResponse::new(
                ErrorCode::RateLimited {
                    retry_after_ms: 60_000,
                },
                format!(
                    "the account has {of_account} recent pairing codes, the most the server keeps; \
                     finish or let one expire, then try again"
                ),
            ));
        }
        slots.insert(
            (account, slot),
            Slot {
                opener: device,
                expires_at: now.saturating_add(u64::from(secs)),
                state: State::Open,
            },
        );
        Ok(ack())
    }

    /// The slot as `device` may see it, or why not.
    fn usable(
        slots: &mut HashMap<(AccountId, SlotId), Slot>,
        account: AccountId,
        slot: SlotId,
        now: u64,
    ) -> Result<&mut Slot, ErrorResponse> {
        let s = slots
            .get_mut(&(account, slot))
            .ok_or_else(|| refused(SlotRefusal::Unknown))?;
        if matches!(s.state, State::Done) {
            return Err(refused(SlotRefusal::Used));
        }
        if now >= s.expires_at {
            return Err(refused(SlotRefusal::Expired));
        }
        Ok(s)
    }

    fn post(&self, account: AccountId, device: DeviceId, slot: SlotId, body: Vec<u8>) -> Answer {
        let now = self.now();
        let mut slots = self.lock();
        let s = Self::usable(&mut slots, account, slot, now)?;
        if s.opener == device {
            return Err(bad(
                "a device cannot answer its own pairing code: enter the code on the new device",
            ));
        }
        if !matches!(s.state, State::Open) {
            return Err(refused(SlotRefusal::Used));
        }
        s.state = State::Posted {
            poster: device,
            payload: body,
        };
        drop(slots);
        self.changed.notify_waiters();
        Ok(ack())
    }

    fn take_step(&self, account: AccountId, device: DeviceId, slot: SlotId) -> Step {
        let now = self.now();
        let mut slots = self.lock();
        let s = match Self::usable(&mut slots, account, slot, now) {
            Ok(s) if s.opener == device => s,
            Ok(_) => return Step::Ready(Err(refused(SlotRefusal::Unknown))),
            Err(e) => return Step::Ready(Err(e)),
        };
        match std::mem::replace(&mut s.state, State::Done) {
            State::Open => {
                s.state = State::Open;
                Step::Wait {
                    until: s.expires_at,
                }
            }
            State::Posted { poster, payload: p } => {
                s.state = State::Taken { poster };
                Step::Ready(Ok(payload(p)))
            }
            other => {
                s.state = other;
                Step::Ready(Err(refused(SlotRefusal::Used)))
            }
        }
    }

    fn reply(&self, account: AccountId, device: DeviceId, slot: SlotId, body: Vec<u8>) -> Answer {
        let now = self.now();
        let mut slots = self.lock();
        let s = Self::usable(&mut slots, account, slot, now)?;
        if s.opener != device {
            return Err(refused(SlotRefusal::Unknown));
        }
        let State::Taken { poster } = s.state else {
            return Err(bad(
                "PairingReply comes after PairingTake has returned the joiner's post",
            ));
        };
        s.state = State::Replied {
            poster,
            payload: body,
        };
        drop(slots);
        self.changed.notify_waiters();
        Ok(ack())
    }

    fn await_step(&self, account: AccountId, device: DeviceId, slot: SlotId) -> Step {
        let now = self.now();
        let mut slots = self.lock();
        let s = match Self::usable(&mut slots, account, slot, now) {
            Ok(s) => s,
            Err(e) => return Step::Ready(Err(e)),
        };
        let poster = match &s.state {
            State::Posted { poster, .. }
            | State::Taken { poster }
            | State::Replied { poster, .. } => *poster,
            State::Open | State::Done => return Step::Ready(Err(refused(SlotRefusal::Unknown))),
        };
        if poster != device {
            return Step::Ready(Err(refused(SlotRefusal::Used)));
        }
        match std::mem::replace(&mut s.state, State::Done) {
            State::Replied { payload: p, .. } => Step::Ready(Ok(payload(p))),
            other => {
                s.state = other;
                Step::Wait {
                    until: s.expires_at,
                }
            }
        }
    }

    /// Runs `step` until it is ready, waking on every slot change and at the slot's expiry.
    async fn wait(&self, cancel: &CancellationToken, step: impl Fn() -> Step) -> Answer {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = match step() {
                Step::Ready(answer) => return answer,
                Step::Wait { until } => until,
            };
            let left = Duration::from_secs(until.saturating_sub(self.now()));
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(left) => {}
                () = cancel.cancelled() => {
                    return Err(ErrorResponse::new(
                        ErrorCode::Internal,
                        "the server is shutting down; start the pairing again with a new code",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dooz_protocol::{PairingAwaitReply, PairingOpen, PairingPost, PairingReply, PairingTake};

    fn dev(b: u8) -> DeviceId {
        DeviceId::from_bytes([b; 32])
    }

    fn refusal(answer: &Answer) -> Option<SlotRefusal> {
        answer.as_ref().err().and_then(SlotRefusal::of)
    }

    async fn call(slots: &Slots, account: AccountId, device: DeviceId, req: Request) -> Answer {
        slots
            .serve(account, device, req, &CancellationToken::new())
            .await
            .unwrap()
    }

    fn open(slot: SlotId) -> Request {
        Request::PairingOpen(PairingOpen {
            slot,
            expires_in_secs: 900,
            ext: Default::default(),
        })
    }

    fn post(slot: SlotId, p: &[u8]) -> Request {
        Request::PairingPost(PairingPost {
            slot,
            payload: p.to_vec(),
            ext: Default::default(),
        })
    }

    #[tokio::test]
    async fn a_slot_carries_one_post_and_one_reply_then_is_used_up() {
        let slots = Slots::default();
        let acc = AccountId::new(1);
        let slot = SlotId::from_bytes([7; 32]);
        let (a, b, c) = (dev(1), dev(2), dev(3));
        call(&slots, acc, a, open(slot)).await.unwrap();
        // Another account does not see the slot.
        let other = call(&slots, AccountId::new(2), b, post(slot, b"x")).await;
        assert_eq!(refusal(&other), Some(SlotRefusal::Unknown));
        call(&slots, acc, b, post(slot, b"keys")).await.unwrap();
        let again = call(&slots, acc, c, post(slot, b"mallory")).await;
        assert_eq!(refusal(&again), Some(SlotRefusal::Used));
        let take = Request::PairingTake(PairingTake {
            slot,
            ext: Default::default(),
        });
        let got = call(&slots, acc, a, take).await.unwrap();
        assert!(matches!(got, Response::PairingPayload(p) if p.payload == b"keys"));
        let reply = Request::PairingReply(PairingReply {
            slot,
            payload: b"envelopes".to_vec(),
            ext: Default::default(),
        });
        call(&slots, acc, a, reply).await.unwrap();
        let wait = Request::PairingAwaitReply(PairingAwaitReply {
            slot,
            ext: Default::default(),
        });
        let got = call(&slots, acc, b, wait.clone()).await.unwrap();
        assert!(matches!(got, Response::PairingPayload(p) if p.payload == b"envelopes"));
        let used = call(&slots, acc, b, wait).await;
        assert_eq!(refusal(&used), Some(SlotRefusal::Used));
    }

    #[tokio::test]
    async fn take_waits_for_the_post_and_slots_expire() {
        let slots = std::sync::Arc::new(Slots::default());
        let acc = AccountId::new(1);
        let slot = SlotId::from_bytes([8; 32]);
        call(&slots, acc, dev(1), open(slot)).await.unwrap();
        let waiter = {
            let slots = std::sync::Arc::clone(&slots);
            tokio::spawn(async move {
                let take = Request::PairingTake(PairingTake {
                    slot,
                    ext: Default::default(),
                });
                call(&slots, acc, dev(1), take).await
            })
        };
        call(&slots, acc, dev(2), post(slot, b"keys"))
            .await
            .unwrap();
        assert!(waiter.await.unwrap().is_ok());

        let late = SlotId::from_bytes([9; 32]);
        call(&slots, acc, dev(1), open(late)).await.unwrap();
        slots.advance_clock(u64::from(MAX_PAIRING_SLOT_SECS));
        let expired = call(&slots, acc, dev(2), post(late, b"keys")).await;
        assert_eq!(refusal(&expired), Some(SlotRefusal::Expired));
        assert!(expired.unwrap_err().message.contains("expired"));
    }

    #[tokio::test]
    async fn an_account_has_a_bounded_number_of_slots() {
        let slots = Slots::default();
        let acc = AccountId::new(1);
        for i in 0..MAX_SLOTS_PER_ACCOUNT {
            let slot = SlotId::from_bytes([u8::try_from(i).unwrap(); 32]);
            call(&slots, acc, dev(1), open(slot)).await.unwrap();
        }
        let more = call(&slots, acc, dev(1), open(SlotId::from_bytes([200; 32]))).await;
        assert!(matches!(
            more.unwrap_err().code,
            ErrorCode::RateLimited { .. }
        ));
        // Another account is not affected.
        call(
            &slots,
            AccountId::new(2),
            dev(1),
            open(SlotId::from_bytes([200; 32])),
        )
        .await
        .unwrap();
    }
}
