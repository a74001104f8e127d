//! `decode_frame` on arbitrary bytes: never panics; an accepted frame re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fibflow::log::recovery::check_frame_decode(data);
});
