//! Values and rows between the embedded store and SQLite: parameters as SQLite values,
//! job rows as [`Job`]s.

use super::{parse_repo, Job, JobKind, StoreError};

pub(super) fn text(value: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(value.to_owned())
}

pub(super) fn opt_text(value: Option<&str>) -> rusqlite::types::Value {
    value.map_or(rusqlite::types::Value::Null, text)
}

pub(super) fn int(value: i64) -> rusqlite::types::Value {
    rusqlite::types::Value::Integer(value)
}

/// A job row as SQLite returns it: repo, target, kind, attempts, created, version.
pub(super) type JobRow = (String, String, String, i32, i64, i64);

pub(super) fn job_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

pub(super) fn jobs(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    rows.into_iter()
        .map(|(repo, target, kind, attempts, created_ms, version)| {
            Ok(Job {
                repo: parse_repo(&repo)?,
                target,
                kind: JobKind::parse(&kind)?,
                attempts,
                created_ms,
                version,
            })
        })
        .collect()
}
