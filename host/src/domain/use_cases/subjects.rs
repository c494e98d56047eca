//! Subjects: the end users a reseller refers to by an opaque `subject_ref`. Their personal
//! fields are sealed under a data key of their own before any record holds them (see
//! [`crate::domain::personal`]); this is where that key is created and used.

use crate::domain::gateway::{DomainError, Gateway};
use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::orders::Order;
use crate::domain::personal::{Personal, SealedPersonal, SubjectLookup};
use crate::domain::store::StoreError;

impl Gateway {
    /// Seal the personal fields of order `id` of `reseller`: under the subject's data key
    /// (created on the subject's first record), or under the master key when there is no
    /// subject. Nothing to seal is `None`.
    pub(crate) async fn seal_personal(
        &self,
        reseller: ResellerId,
        id: OrderId,
        personal: &Personal,
    ) -> Result<Option<SealedPersonal>, DomainError> {
        if personal.is_empty() {
            return Ok(None);
        }
        let plaintext = serde_json::to_vec(personal).expect("personal fields serialise");
        let context = id.to_bytes();
        let Some(subject_ref) = &personal.subject_ref else {
            return Ok(Some(SealedPersonal {
                subject: None,
                sealed: self.keyring.seal(&context, &plaintext),
            }));
        };
        let lookup = self.keyring.subject_lookup(reseller, subject_ref);
        let sealed = self.seal_for(&lookup, &context, &plaintext).await?;
        Ok(Some(SealedPersonal {
            subject: Some(lookup),
            sealed,
        }))
    }

    /// Seal `plaintext` under subject `lookup`'s data key (made on first use), bound to
    /// `context`.
    pub(crate) async fn seal_for(
        &self,
        lookup: &SubjectLookup,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        let wrapped = match self.store.subject_key(lookup).await? {
            Some(wrapped) => wrapped,
            None => {
                self.store
                    .create_subject_key(lookup, &self.keyring.new_subject_key(lookup))
                    .await?
            }
        };
        Ok(self
            .keyring
            .seal_for_subject(lookup, &wrapped, context, plaintext)
            .ok_or_else(|| StoreError::Decode("a subject's data key does not open".into()))?)
    }

    /// Open what [`Gateway::seal_for`] sealed; `None` once the subject's key is gone
    /// (erased).
    pub(crate) async fn open_for(
        &self,
        lookup: &SubjectLookup,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, DomainError> {
        let Some(wrapped) = self.store.subject_key(lookup).await? else {
            return Ok(None);
        };
        let plaintext = self
            .keyring
            .open_for_subject(lookup, &wrapped, context, sealed)
            .ok_or_else(|| StoreError::Decode("a subject's sealed record does not open".into()))?;
        Ok(Some(plaintext))
    }

    /// The personal fields of an order, opened. A subject whose data key is gone has none
    /// left anywhere.
    pub(crate) async fn open_personal(&self, order: &Order) -> Result<Personal, DomainError> {
        let Some(personal) = &order.personal else {
            return Ok(Personal::default());
        };
        let context = order.id.to_bytes();
        let plaintext = match &personal.subject {
            None => self.keyring.open(&context, &personal.sealed),
            Some(lookup) => match self.open_for(lookup, &context, &personal.sealed).await? {
                None => return Ok(Personal::default()),
                Some(plaintext) => Some(plaintext),
            },
        };
        let plaintext = plaintext.ok_or_else(|| {
            StoreError::Decode(format!(
                "the personal fields of order {} do not open",
                order.id
            ))
        })?;
        Ok(serde_json::from_slice(&plaintext).map_err(|e| StoreError::Decode(e.to_string()))?)
    }
}
