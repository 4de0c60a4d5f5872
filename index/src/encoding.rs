//! How records are stored in sled (postcard), and the helpers of sled transactions.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::{IndexError, Result};

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<IndexError>>;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(IndexError::Encode)
}

/// [`encode`] inside a transaction.
pub(crate) fn tx_encode<T: Serialize>(value: &T) -> TxResult<Vec<u8>> {
    encode(value).map_err(ConflictableTransactionError::Abort)
}

/// Decodes a record as the index stores it (postcard); public for fuzzing and tools. Bytes
/// after the record are refused: postcard has no field tags, so they could only be a field of
/// a newer layout, which must come with a new version (docs/format.md, "Versioning").
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (record, rest) = postcard::take_from_bytes(bytes).map_err(IndexError::Decode)?;
    if !rest.is_empty() {
        return Err(IndexError::TrailingBytes(rest.len()));
    }
    Ok(record)
}

pub(crate) fn tx_decode<T: DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

pub(crate) fn abort<T>(error: IndexError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

pub(crate) fn flatten<T>(result: std::result::Result<T, TransactionError<IndexError>>) -> Result<T> {
    result.map_err(|error| match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => IndexError::Sled(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BaseCandidate, ChunkRecord, ObjectRecord, UploadRecord};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_records_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ObjectRecord>(&bytes);
            let _ = decode::<ChunkRecord>(&bytes);
            let _ = decode::<UploadRecord>(&bytes);
            let _ = decode::<BaseCandidate>(&bytes);
        }
    }

    #[test]
    fn bytes_after_a_record_are_refused() {
        let mut bytes = encode(&crate::PackRecord { total_bytes: 7, live_bytes: 3 }).unwrap();
        assert_eq!(decode::<crate::PackRecord>(&bytes).unwrap(), crate::PackRecord { total_bytes: 7, live_bytes: 3 });
        bytes.push(0);
        assert!(matches!(decode::<crate::PackRecord>(&bytes), Err(IndexError::TrailingBytes(1))));
    }
}
