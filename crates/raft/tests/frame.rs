//! The frame decoder never panics on arbitrary bytes, and round-trips what it encodes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use proptest::prelude::*;
use worknode_raft::frame::{
    decode, encode, Agreement, Frame, FrameError, HEADER_BYTES, PAYLOAD_BYTES_MAX,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        // Whatever the bytes, decode returns; a result never claims more bytes than given.
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn encoded_frames_round_trip(messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20), cluster in any::<u64>(), from in any::<u64>(), digests in any::<(u64, u64)>()) {
        let agreement = Agreement { members: digests.0, schedule: digests.1 };
        for frame in [
            Frame::Messages(messages.clone()),
            Frame::Hello { cluster_id: cluster, from, agreement: Some(agreement) },
            Frame::Hello { cluster_id: cluster, from, agreement: None },
        ] {
            let mut bytes = Vec::new();
            encode(&frame, &mut bytes);
            prop_assert_eq!(decode(&bytes).unwrap(), Some((frame.clone(), bytes.len())));
            // Every strict prefix asks for more bytes instead of failing.
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_checksum(payload in prop::collection::vec(any::<u8>(), 1..64), bit in 0usize..512) {
        let mut bytes = Vec::new();
        encode(&Frame::Messages(vec![payload]), &mut bytes);
        let position = HEADER_BYTES + (bit / 8) % (bytes.len() - HEADER_BYTES);
        bytes[position] ^= 1 << (bit % 8);
        let refused = matches!(decode(&bytes), Err(FrameError::Checksum { .. }));
        prop_assert!(refused, "a corrupted payload was accepted");
    }
}

#[test]
fn oversized_and_foreign_frames_are_refused() {
    let mut header = vec![1u8, 2];
    header.extend_from_slice(&((PAYLOAD_BYTES_MAX + 1) as u32).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    assert_eq!(decode(&header), Err(FrameError::Oversized(PAYLOAD_BYTES_MAX + 1)));
    assert_eq!(decode(&[9, 2, 0, 0, 0, 0, 0, 0, 0, 0]), Err(FrameError::Version(9)));
    assert_eq!(decode(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0]), Err(FrameError::Kind(7)));
}
