//! Running user closures (`update`, `transaction`, `retain`,
//! `get_or_insert_with`) so that a panic in one cannot hurt the map: it is
//! caught where the closure runs, nothing of that call is applied, and the
//! panic resumes in the caller's task.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

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
