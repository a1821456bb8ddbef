#![doc = include_str!("../README.md")]

pub mod cases;
mod child;
mod crash;
mod distinct_keys;
mod expiry;
mod factory;
mod faults;
mod harness;
mod limits;
mod modes;
mod processes;
mod sharing;
mod stats;
mod subscriptions;
mod sync;
pub mod types;

pub use factory::{ConformanceBackend, StoreFactory};
pub use harness::{run_case, skip_notice};
pub use persistent_map_core::async_trait;

/// Expands to one `#[test]` per conformance case, each running against a
/// fresh factory built from the given expression.
///
/// ```ignore
/// persistent_map_conformance::conformance_tests!(MyFactory::new());
/// ```
///
/// Cases that depend on optional behaviour read the backend's
/// [`Capabilities`](persistent_map_core::Capabilities) and check the
/// guarantee that applies; none is skipped by hand.
///
/// A backend that needs something outside the test (a database server) uses
/// the second form: `skip_if` is evaluated at the start of every case, and
/// when it gives `Some(reason)` the case prints `SKIP: <case>: <reason>`
/// (to the terminal, past the test harness's output capture) and passes
/// without building the factory. Make the expression panic instead when a
/// missing server must fail the run (as `PERSISTENT_MAP_REQUIRE_SERVERS=1`
/// asks).
///
/// ```ignore
/// persistent_map_conformance::conformance_tests!(
///     MyFactory::new(),
///     skip_if = std::env::var("MY_SERVER_URL")
///         .is_err()
///         .then_some("set MY_SERVER_URL")
/// );
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!($factory, skip_if = ::std::option::Option::<&str>::None);
    };
    ($factory:expr, skip_if = $skip:expr $(,)?) => {
        $crate::__conformance_cases! {
            $factory;
            $skip;
            round_trip_text,
            round_trip_records,
            round_trip_tuple_keys,
            round_trip_struct_keys,
            large_values,
            insert_returns_previous_value,
            remove_returns_value_and_persists,
            remove_missing_key_is_none,
            reopen_sees_exactly_what_was_acknowledged,
            flush_then_reopen,
            clear_empties_the_store,
            retain_persists_removals,
            concurrent_writers_leave_store_equal_to_cache,
            unencodable_value_is_rejected_without_trace,
            batch_is_ordered,
            failed_batch_applies_all_or_a_prefix,
            delete_is_idempotent,
            legacy_query_methods_agree,
            second_opener_is_locked_out,
            transactions_reach_the_cache_in_every_mode,
            mixed_writers_with_a_tiny_queue_finish,
            panicking_closures_leave_the_map_working,
            closures_may_read_the_map,
            acknowledged_before_close_is_kept,
            clones_share_one_map,
            drop_then_reopen_releases_the_store,
            remove_reaches_a_shared_store,
            keys_that_differ_slightly_stay_distinct,
            a_large_key_and_a_large_value_round_trip,
            a_million_changes_in_one_batch,
            acknowledged_writes_survive_a_drop,
            acknowledged_writes_survive_a_kill,
            flush_syncs_the_store_files,
            load_keys_answers_in_the_order_asked,
            two_live_instances_follow_each_other,
            two_processes_follow_each_other,
            a_failure_in_the_middle_of_a_batch,
            keys_that_share_a_legacy_text_stay_distinct,
            stats_follow_counted_operations,
            expiring_entries_round_trip_through_the_store,
            expired_entries_vanish_at_once_and_are_swept,
            the_sweep_spares_a_key_written_again,
            deadlines_follow_update_expire_and_persist,
            expiry_is_shared_by_live_instances,
            a_sweep_announces_only_what_it_removed,
            subscription_matches_the_store,
            a_slow_subscriber_lags_without_slowing_writers,
            subscription_marks_remote_changes,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:expr; $skip:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let ::std::option::Option::Some(reason) = $skip {
                    $crate::skip_notice(stringify!($case), &reason);
                    return;
                }
                $crate::run_case($factory, $crate::cases::$case);
            }
        )*
    };
}
