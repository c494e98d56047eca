//! Events: a reseller reads what happened to its records, newest first, to catch up on
//! what its webhook receiver missed.

use crate::domain::events::{Event, EventType};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::EventId;
use crate::domain::store::Page;

impl Gateway {
    /// The caller's events, newest first, older than `before`, optionally of one type.
    pub async fn events(
        &self,
        who: &Principal,
        before: Option<EventId>,
        kind: Option<EventType>,
        limit: usize,
    ) -> Result<Page<Event>, DomainError> {
        let reseller = self.reseller_of(who).await?;
        Ok(self
            .store
            .events_page(reseller.id, before, kind, limit)
            .await?)
    }
}
