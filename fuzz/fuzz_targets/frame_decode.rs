//! `cargo fuzz run frame_decode`: the peer frame decoder on arbitrary bytes must return
//! (a frame, "need more", or an error), never panic, and never claim more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worknode_raft::frame::decode;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, used))) = decode(rest) {
        assert!(used <= rest.len() && used > 0);
        rest = &rest[used..];
    }
});
