//! Decoding that allocates only for what the input holds.
//!
//! A snapshot arrives from a peer, and postcard reports a collection's length from the
//! input before any element is read. `imbl`'s own `Deserialize` reserves that many
//! elements up front, so a few bytes claiming 2^40 entries abort the process on
//! allocation. These grow element by element instead; serde's `Vec` already caps its
//! reservation.

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, Vector};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `deserialize_with` for an [`OrdMap`].
pub(crate) fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(Entries(PhantomData))
}

/// `deserialize_with` for a [`Vector`].
pub(crate) fn vector<'de, D, T>(deserializer: D) -> Result<Vector<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    Vec::<T>::deserialize(deserializer).map(Vector::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "ord_map")]
        map: OrdMap<u64, u64>,
        #[serde(deserialize_with = "vector")]
        list: Vector<u64>,
    }

    #[test]
    fn a_huge_claimed_length_fails_without_reserving_it() {
        // Varint 2^42 as the map's length, then nothing.
        let claim = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(postcard::from_bytes::<Holder>(&claim).is_err());
        let mut list_claim = vec![0x00];
        list_claim.extend_from_slice(&claim);
        assert!(postcard::from_bytes::<Holder>(&list_claim).is_err());
    }

    #[test]
    fn what_imbl_encodes_decodes() {
        let map: OrdMap<u64, u64> = [(1u64, 10u64), (2, 20)].into_iter().collect();
        let list: Vector<u64> = [3u64, 4, 5].into_iter().collect();
        let bytes = postcard::to_allocvec(&(&map, &list)).unwrap();
        let holder: Holder = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((holder.map, holder.list), (map, list));
    }
}
