//! csv-async and I/O errors turned into [`PersistentError`]s that name the file.

use std::path::Path;

use csv_async::ErrorKind;
use persistent_map_core::{EntryPart, Location, PersistentError};

/// The location of a file, as errors print it.
pub(crate) fn at(path: &Path) -> Location {
    Location::new(path.display().to_string())
}

/// Converts a csv-async error met while reading or writing `path`.
///
/// I/O errors keep their kind (so a full disk is
/// [`PersistentError::StorageFull`]); a value that csv's serde support cannot
/// decode is a codec error; anything else means the file is damaged. Every
/// error names the file and, where csv-async knows it, the line.
pub(crate) fn from_csv(path: &Path, err: csv_async::Error) -> PersistentError {
    let mut location = at(path);
    if let Some(pos) = err.position() {
        location = location.with_line(pos.line());
    }
    if err.is_io_error() {
        return match err.into_kind() {
            ErrorKind::Io(source) => PersistentError::io(path, source),
            other => PersistentError::corrupt(location, format!("{other:?}")),
        };
    }
    match err.kind() {
        ErrorKind::Deserialize { .. } => PersistentError::decode(EntryPart::Value, location, err),
        ErrorKind::Utf8 { .. } => PersistentError::corrupt(location, "record is not valid UTF-8"),
        _ => PersistentError::corrupt(location, err.to_string()),
    }
}
