//! Keeping panics from hurting the map. A panic in a user closure
//! (`update`, `transaction`, `retain`, `get_or_insert_with`) is caught where
//! the closure runs, nothing of that call is applied, and the panic resumes
//! in the caller's task. A panic in a backend call becomes that call's error.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use futures::FutureExt;

use crate::error::{PersistentError, Result};

/// What a panicking closure left behind, to resume in its caller.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// Runs `f`, catching a panic.
///
/// Unwind safety is asserted because nothing `f` can reach is left half
/// changed: it reads the cache through clones and decides, and the map
/// applies the decision only after `f` returned.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(f))
}

/// The message of a panic payload, for errors and logs.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        String::from("a panic with a non-text payload")
    }
}

/// Runs a backend call, turning a panic in the backend into an error.
pub(crate) async fn guard_backend<T>(
    call: impl Future<Output = Result<T>>,
    what: &str,
) -> Result<T> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            Err(PersistentError::Other(
                format!(
                    "the backend panicked while trying to {what}: {}",
                    panic_message(payload.as_ref())
                )
                .into(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message() {
        let caught = guarded(|| -> u32 { panic!("boom {}", 7) }).expect_err("panicked");
        assert_eq!(panic_message(caught.as_ref()), "boom 7");
        let caught = guarded(|| -> u32 { panic!("static") }).expect_err("panicked");
        assert_eq!(panic_message(caught.as_ref()), "static");
        assert_eq!(guarded(|| 3).ok(), Some(3));
    }
}
