//! The repository's one create-if-absent policy (`format-spec/object-stores.md`, "Swift").
//!
//! The protocol's commit points — `config`, root manifests, tombstones, gc markers — are
//! created with "exactly one creator wins" ([`create_exclusive`]). Stores whose
//! `put_if_absent` is atomic (fs, memory, S3 with `If-None-Match: *`) give that directly.
//! Swift checks `If-None-Match` when a PUT *arrives*, so creators whose PUTs overlap can all
//! get `201`; the object then holds the one with the newest timestamp. On such stores the
//! winner is decided by reading the object back once every overlapping create has landed:
//! the writer whose bytes are stored won, everyone else lost. That needs two things, both
//! enforced here: every writer's bytes are unique (each caller's object embeds a writer
//! nonce: the config's random `repo_id`, the manifest's writer and random snapshot id, the
//! tombstone's and gc marker's holder), and every create attempt ends within half the
//! settle time, so no create can land after a reader's settle.
//!
//! Lease generations (`leases/<holder>/<generation>`) are named by the holder's own random
//! id, so no other writer can create them: [`create_own`] skips the settle time there,
//! which would otherwise be paid twice more per backup, delete and gc.

use crate::store::{ObjectStore, PutOutcome, StoreError, StoreErrorKind};
use bytes::Bytes;

/// Creates `key` with `data` unless it exists, with exactly one winner among concurrent
/// creators on every store whose `capabilities()` are honest (see the module doc).
/// `data` must be unique to this writer. Returns `Created` only to the winner.
pub async fn create_exclusive(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<PutOutcome, StoreError> {
    let caps = store.capabilities();
    if caps.atomic_create || caps.create_settle.is_zero() {
        return store.put_if_absent(key, data).await;
    }
    let settle = caps.create_settle;
    // Bounding the attempt (retries included) keeps the settle argument valid: a create
    // that arrived before ours landed has finished or been abandoned within settle / 2.
    let bound = settle / 2;
    let outcome = tokio::time::timeout(bound, store.put_if_absent(key, data.clone())).await;
    let first = match outcome {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => return Err(e),
        Err(_) => None,
    };
    if first == Some(PutOutcome::AlreadyExists) {
        // Refused: an object was already complete. Ours can only be there if an earlier
        // attempt inside the retry layer landed; otherwise we lost without waiting.
        match store.get(key).await {
            Ok(stored) if stored == data => {}
            Ok(_) => return Ok(PutOutcome::AlreadyExists),
            Err(e) if e.kind() == StoreErrorKind::NotFound => return Ok(PutOutcome::AlreadyExists),
            Err(e) => return Err(e),
        }
    }
    tokio::time::sleep(settle).await;
    match store.get(key).await {
        Ok(stored) if stored == data => Ok(PutOutcome::Created),
        Ok(_) => Ok(PutOutcome::AlreadyExists),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Err(StoreError::new(
            StoreErrorKind::Timeout,
            "create_exclusive",
            &store.location(),
            key,
            match first {
                None => format!(
                    "the create did not finish within {bound:?} (half the create settle \
                     time) and no object was stored; nothing was committed"
                ),
                Some(_) => format!(
                    "the object vanished within the {settle:?} create settle time \
                     (deleted concurrently?)"
                ),
            },
        )
        .with_temporary(true)),
        Err(e) => Err(e),
    }
}

/// Creates `key`, which only this writer can name because it embeds the writer's random
/// id (lease generations): there is no race to decide on any store, so a plain
/// `put_if_absent` is exact. `AlreadyExists` means the writer reused its own id.
pub async fn create_own(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<PutOutcome, StoreError> {
    store.put_if_absent(key, data).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Capabilities, MemoryStore, ObjectMeta};
    use async_trait::async_trait;
    use std::ops::Range;
    use std::sync::Arc;
    use std::time::Duration;

    /// A memory store that claims Swift's semantics: every create that finds no complete
    /// object "wins" and overwrites, as overlapping Swift PUTs do.
    #[derive(Debug)]
    struct LastWriterWins(MemoryStore, Duration);

    #[async_trait]
    impl ObjectStore for LastWriterWins {
        fn location(&self) -> String {
            self.0.location()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                atomic_create: false,
                max_batch_delete: 1000,
                create_settle: Duration::from_millis(200),
            }
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            self.0.put(key, data).await
        }
        async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
            let existed = self.0.head(key).await.is_ok();
            tokio::time::sleep(self.1).await;
            if existed {
                return Ok(PutOutcome::AlreadyExists);
            }
            self.0.put(key, data).await?;
            Ok(PutOutcome::Created)
        }
        async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
            self.0.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
            self.0.get_range(key, range).await
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.0.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<ObjectMeta>, StoreError> {
            self.0.list(prefix, start_after, limit).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        async fn delete_batch(&self, keys: &[String]) -> Result<(), StoreError> {
            self.0.delete_batch(keys).await
        }
    }

    #[tokio::test]
    async fn overlapping_creates_have_one_winner() {
        let store = Arc::new(LastWriterWins(
            MemoryStore::new_unique().expect("memory"),
            Duration::from_millis(20),
        ));
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    create_exclusive(store.as_ref(), "k", Bytes::from(vec![i; 10])).await
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await.expect("task").expect("create") == PutOutcome::Created {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn slow_create_that_never_lands_is_an_error() {
        let store = LastWriterWins(
            MemoryStore::new_unique().expect("memory"),
            Duration::from_secs(5),
        );
        let err = create_exclusive(&store, "k", Bytes::from_static(b"x"))
            .await
            .expect_err("create past half the settle time");
        assert_eq!(err.kind(), StoreErrorKind::Timeout);
        assert!(store.0.get("k").await.is_err(), "nothing was stored");
    }
}
