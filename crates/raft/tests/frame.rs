//! The frame decoder never panics on arbitrary bytes, and round-trips what it encodes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use proptest::prelude::*;
use worknode_raft::clock_offset::Echo;
use worknode_raft::frame::{
    decode, encode, encode_batch, Agreement, Frame, FrameError, Reassembly, HEADER_BYTES,
    MESSAGE_BYTES_MAX, PART_BYTES, PAYLOAD_BYTES_MAX,
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
            Frame::Part { total: from % MESSAGE_BYTES_MAX, bytes: vec![7; 1 + cluster as usize % 64] },
            Frame::Clock { sent_unix_ns: from, echo: Some(Echo { sent_unix_ns: cluster, received_unix_ns: digests.0 | 1 }) },
            Frame::Clock { sent_unix_ns: cluster, echo: None },
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

/// Decodes every frame of `units` in order, joining parts, into the messages sent.
fn receive(units: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut stream: Vec<u8> = units.concat();
    let mut reassembly = Reassembly::default();
    let mut messages = Vec::new();
    while let Some((frame, used)) = decode(&stream).unwrap() {
        assert!(used - HEADER_BYTES <= PAYLOAD_BYTES_MAX);
        match frame {
            Frame::Messages(batch) => {
                assert!(!reassembly.in_progress(), "a batch inside a split message");
                messages.extend(batch);
            }
            Frame::Part { total, bytes } => {
                assert!(bytes.len() <= PART_BYTES);
                messages.extend(reassembly.push(total, bytes).unwrap());
            }
            Frame::Hello { .. } | Frame::Clock { .. } => {
                unreachable!("encode_batch makes neither a hello nor a clock stamp")
            }
        }
        stream.drain(..used);
    }
    assert!(stream.is_empty() && !reassembly.in_progress());
    messages
}

#[test]
fn large_messages_travel_in_parts_and_batches_fill_frames_in_order() {
    let sizes = [10, PART_BYTES + 1, 3, PART_BYTES / 2, PART_BYTES / 2 + 10, 3 * PART_BYTES, 0];
    let messages: Vec<Vec<u8>> =
        sizes.iter().enumerate().map(|(i, size)| vec![i as u8; *size]).collect();
    let units = encode_batch(messages.clone());
    // 10 | parts of the second | 3 and a half | the next half (it does not fit) | parts
    // of the sixth | the empty one.
    assert_eq!(units.len(), 6);
    assert_eq!(receive(&units), messages);
}

#[test]
fn parts_that_disagree_or_overflow_are_refused() {
    let mut reassembly = Reassembly::default();
    assert_eq!(reassembly.push(10, vec![1; 4]), Ok(None));
    assert!(reassembly.push(11, vec![1; 4]).is_err(), "another message's size");
    let mut reassembly = Reassembly::default();
    assert_eq!(reassembly.push(10, vec![1; 4]), Ok(None));
    assert!(reassembly.push(10, vec![1; 7]).is_err(), "past the total");
    let mut reassembly = Reassembly::default();
    assert_eq!(reassembly.push(6, vec![1; 4]), Ok(None));
    assert_eq!(reassembly.push(6, vec![2; 2]), Ok(Some(vec![1, 1, 1, 1, 2, 2])));
    assert!(!reassembly.in_progress());
    let mut claim = Vec::new();
    encode(&Frame::Part { total: MESSAGE_BYTES_MAX + 1, bytes: vec![0] }, &mut claim);
    assert!(matches!(decode(&claim), Err(FrameError::Malformed(_))));
}
