//! Documents that have no NAR: build logs (`/log/<drv>`) and realisations (`/realisations/…`,
//! `/build-trace-v2/…`). Stored in the database when uploaded, or fetched from an upstream that
//! has them (and then kept). The HTTP layer calls this; nothing else does.

use std::sync::Arc;

use ncps_db::Database;
use ncps_upstream::Upstreams;

use crate::CacheError;

/// Largest build log fetched from an upstream.
const MAX_UPSTREAM_LOG: usize = 64 * 1024 * 1024;

/// Largest realisation or build-trace document accepted (they are small JSON objects).
pub const MAX_REALISATION_UPLOAD: usize = 64 * 1024;

/// Build logs and realisations; cheap to clone.
#[derive(Clone)]
pub struct Documents(Arc<State>);

struct State {
    db: Database,
    upstreams: Upstreams,
    /// Largest build log accepted by upload.
    max_upload: u64,
}

impl Documents {
    pub(crate) fn new(db: Database, upstreams: Upstreams, max_upload: u64) -> Self {
        Self(Arc::new(State {
            db,
            upstreams,
            max_upload,
        }))
    }

    /// Stores a build log (`PUT /log/<drv>`).
    pub async fn put_build_log(&self, drv: &str, content: &[u8]) -> Result<(), CacheError> {
        let limit = self.0.max_upload;
        if content.len() as u64 > limit {
            return Err(CacheError::TooLarge { limit });
        }
        Ok(self.0.db.put_build_log(drv, content).await?)
    }

    /// A build log (`GET /log/<drv>`): stored, or fetched from an upstream that has it (and
    /// then kept).
    pub async fn build_log(&self, drv: &str) -> Result<Vec<u8>, CacheError> {
        if let Some(log) = self.0.db.build_log(drv).await? {
            return Ok(log);
        }
        let path = format!("log/{drv}");
        let log = self
            .0
            .upstreams
            .find_document(&path, MAX_UPSTREAM_LOG)
            .await?
            .ok_or(CacheError::NotFound)?;
        self.0.db.put_build_log(drv, log.as_bytes()).await?;
        Ok(log.into_bytes())
    }

    /// Stores a realisation or build-trace document under its (already validated) id.
    pub async fn put_realisation(&self, id: &str, content: &str) -> Result<(), CacheError> {
        check_json_object(content)?;
        Ok(self.0.db.put_realisation(id, content).await?)
    }

    /// A realisation or build-trace document: stored, or fetched from an upstream that has it
    /// (the id is its path on the upstream) and then kept.
    pub async fn realisation(&self, id: &str) -> Result<String, CacheError> {
        if let Some(document) = self.0.db.realisation(id).await? {
            return Ok(document);
        }
        let document = self
            .0
            .upstreams
            .find_document(id, MAX_REALISATION_UPLOAD)
            .await?
            .ok_or(CacheError::NotFound)?;
        check_json_object(&document)?;
        self.0.db.put_realisation(id, &document).await?;
        Ok(document)
    }
}

/// Realisations are JSON objects; refuse anything else rather than serve garbage to clients.
fn check_json_object(content: &str) -> Result<(), CacheError> {
    let trimmed = content.trim_start();
    if trimmed.starts_with('{') && content.trim_end().ends_with('}') {
        Ok(())
    } else {
        Err(CacheError::BadRequest(
            "a realisation must be a JSON object".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realisations_must_be_json_objects() {
        assert!(check_json_object(r#" {"id": "x"} "#).is_ok());
        assert!(check_json_object("[1]").is_err());
        assert!(check_json_object("{ unterminated").is_err());
        assert!(check_json_object("").is_err());
    }
}
