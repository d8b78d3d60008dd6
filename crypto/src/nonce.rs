//! Random XChaCha20 nonces, drawn from a per-thread buffer of operating-system randomness.
//!
//! Sealing needs one fresh 24-byte nonce per object. One `getrandom` system call per nonce cost
//! a measurable share of sealing a 16 KiB chunk, so each thread keeps a buffer of
//! [`NONCES_PER_REFILL`] nonces' worth of `getrandom` output, refilled by one call when it runs
//! out. Each nonce is a distinct 24-byte slice of that output and is handed out once, so nonces
//! stay as unique and unpredictable as before (192 fresh random bits each; the format does not
//! change, see `docs/FORMAT.md`, "Sealing").
//!
//! **Fork safety.** A forked child starts with a copy of its parent's buffer; if both went on
//! drawing from it they would seal with the same nonces under the same key, which breaks
//! XChaCha20-Poly1305. The buffer therefore remembers the process id it was filled in and is
//! discarded, unused, whenever [`std::process::id`] differs (one `getpid` per nonce, far cheaper
//! than a `getrandom`). The one case this cannot see is a descendant that, after the original
//! process exited and process ids wrapped around, gets the very id the buffer was filled under
//! without any process in between having drawn a nonce.

use std::cell::RefCell;

use zeroize::Zeroize;

use crate::seal::NONCE_LEN;

/// Nonces per `getrandom` call: 6 KiB of randomness, one system call per 256 sealed objects.
pub(crate) const NONCES_PER_REFILL: usize = 256;
const BUFFER_LEN: usize = NONCE_LEN * NONCES_PER_REFILL;

struct NonceBuffer {
    bytes: [u8; BUFFER_LEN],
    /// Offset of the next unused nonce; `BUFFER_LEN` when empty.
    next: usize,
    /// The process the buffer was filled in.
    pid: u32,
}

impl NonceBuffer {
    const fn empty() -> Self {
        Self {
            bytes: [0; BUFFER_LEN],
            next: BUFFER_LEN,
            pid: 0,
        }
    }

    fn draw(&mut self) -> Result<[u8; NONCE_LEN], getrandom::Error> {
        let pid = std::process::id();
        if pid != self.pid {
            // Filled in another process (we are a forked child): never use it.
            self.next = BUFFER_LEN;
        }
        if self.next + NONCE_LEN > BUFFER_LEN {
            // Mark empty first, so that a failed refill does not leave old bytes usable.
            self.next = BUFFER_LEN;
            getrandom::getrandom(&mut self.bytes)?;
            self.pid = pid;
            self.next = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        if let Some(src) = self.bytes.get_mut(self.next..self.next + NONCE_LEN) {
            nonce.copy_from_slice(src);
            // Handed out once: wipe it so the buffer only ever holds unused nonces.
            src.zeroize();
        }
        self.next += NONCE_LEN;
        Ok(nonce)
    }
}

thread_local! {
    static BUFFER: RefCell<NonceBuffer> = const { RefCell::new(NonceBuffer::empty()) };
}

/// A fresh random 24-byte nonce: unique, unpredictable, from this thread's buffer.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], getrandom::Error> {
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => buffer.draw(),
        // Not reachable (nothing in `draw` re-enters), but never share a borrowed buffer:
        // fall back to a system call of our own.
        Err(_) => {
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::getrandom(&mut nonce)?;
            Ok(nonce)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nonces_are_distinct_across_refills_and_threads() {
        let draw_many = || {
            (0..NONCES_PER_REFILL * 3 + 7)
                .map(|_| random_nonce().unwrap())
                .collect::<Vec<_>>()
        };
        let mut all: Vec<_> = draw_many();
        let other = std::thread::spawn(draw_many).join().unwrap();
        all.extend(other);
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(all.iter().all(|n| n != &[0; NONCE_LEN]));
    }

    #[test]
    fn used_nonces_are_wiped_and_a_buffer_from_another_process_is_discarded() {
        let mut b = NonceBuffer::empty();
        let first = b.draw().unwrap();
        assert_eq!(b.pid, std::process::id());
        assert_eq!(b.next, NONCE_LEN);
        assert_eq!(&b.bytes[..NONCE_LEN], &[0; NONCE_LEN]);
        let unused = b.bytes[NONCE_LEN..2 * NONCE_LEN].to_vec();
        assert_ne!(unused, [0; NONCE_LEN]);

        // As a forked child sees it: the buffer was filled under another process id. The
        // next nonce must come from a refill, not from the inherited bytes.
        b.pid = b.pid.wrapping_add(1);
        let after_fork = b.draw().unwrap();
        assert_eq!(b.pid, std::process::id());
        assert_eq!(b.next, NONCE_LEN);
        assert_ne!(after_fork.to_vec(), unused);
        assert_ne!(after_fork, first);

        // Exhaustion refills.
        b.next = BUFFER_LEN - NONCE_LEN;
        b.draw().unwrap();
        assert_eq!(b.next, BUFFER_LEN);
        b.draw().unwrap();
        assert_eq!(b.next, NONCE_LEN);
    }
}
