//! The data-plane service (in progress).

mod enrolment;

pub use enrolment::{ENROLMENT_CODE_PREFIX, EnrolmentCode, EnrolmentCodeError};
