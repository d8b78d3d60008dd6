//! Enrolment codes and requests: the sans-IO format lives in `dooz-protocol` (shared with the
//! client, which must not depend on the server); this module re-exports it where the server's
//! code and its users have always found it. See `docs/PROTOCOL.md`, "Enrolment".

pub use dooz_protocol::{
    ENROL_EXTENSION_TAG, ENROLMENT_CODE_PREFIX, EnrolRequest, EnrolmentCode, EnrolmentCodeError,
};
