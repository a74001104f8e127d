//! An arbitrary segment image scans to a valid prefix, in both recovery modes, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fibflow::log::recovery::check_recovery_scan(data);
});
