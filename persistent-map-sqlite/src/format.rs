//! The format versions of a map table: how each stores keys, and whether
//! it has the deadline column.

use persistent_map_core::codec::KeyFormat;

/// The newest on-disk format this release reads, and the one it gives the
/// tables it creates.
///
/// | version | keys | `expires_at` column | written by |
/// | --- | --- | --- | --- |
/// | `0` | [`KeyFormat::Legacy`] | no | persistent-map 0.1.x (no metadata; stamped `1` when opened) |
/// | `1` | [`KeyFormat::Legacy`] | no | 0.2.0, and 0.1.x files it opened; tables created in the legacy key format |
/// | `2` | [`KeyFormat::Distinct`] | no | tables created after 0.2.0, before deadlines came |
/// | `3` | [`KeyFormat::Legacy`] | yes | a version 0 or 1 table after its first entry with a deadline |
/// | `4` | [`KeyFormat::Distinct`] | yes | tables this release creates; a version 2 table after its first entry with a deadline |
///
/// A table keeps its key format: moving it to the other one would mean
/// rewriting keys that other programs may read. Adding the deadline
/// column (`ALTER TABLE ... ADD COLUMN`) leaves every row as it is, so
/// older tables get it in place, in the transaction of the first write
/// that stores a deadline. A table created in the legacy key format (for a
/// tool that copies a legacy table's key texts) is created in version 1,
/// which 0.2.0 reads too, and gets the column the same way.
pub const FORMAT_VERSION: u32 = 4;

/// The version a table without metadata (persistent-map 0.1.x) is stamped with.
pub(crate) const LEGACY_VERSION: u32 = 1;

/// The first version with the deadline column.
const DEADLINE_VERSIONS: u32 = 3;

/// The key format of a table in format `version` (as its meta table
/// records it), for tools that read a table without opening a backend.
///
/// ```
/// use persistent_map_core::codec::KeyFormat;
///
/// assert_eq!(persistent_map_sqlite::key_format_of(1), KeyFormat::Legacy);
/// assert_eq!(persistent_map_sqlite::key_format_of(2), KeyFormat::Distinct);
/// assert_eq!(persistent_map_sqlite::key_format_of(3), KeyFormat::Legacy);
/// assert_eq!(persistent_map_sqlite::key_format_of(4), KeyFormat::Distinct);
/// ```
pub fn key_format_of(version: u32) -> KeyFormat {
    match version {
        0 | 1 | 3 => KeyFormat::Legacy,
        _ => KeyFormat::Distinct,
    }
}

/// Whether a table in format `version` (as its meta table records it) has
/// the `expires_at` column, for tools that read a table without opening a
/// backend.
///
/// ```
/// assert!(!persistent_map_sqlite::has_deadlines(2));
/// assert!(persistent_map_sqlite::has_deadlines(3));
/// assert!(persistent_map_sqlite::has_deadlines(4));
/// ```
pub fn has_deadlines(version: u32) -> bool {
    version >= DEADLINE_VERSIONS
}

/// The version a table this release creates gets, for its key format.
pub(crate) fn new_table_version(key_format: KeyFormat) -> u32 {
    match key_format {
        KeyFormat::Legacy => LEGACY_VERSION,
        _ => FORMAT_VERSION,
    }
}

/// The version a table in format `version` moves to when it gets the
/// deadline column: the same key format, with the column.
pub(crate) fn with_deadlines(version: u32) -> u32 {
    match key_format_of(version) {
        _ if has_deadlines(version) => version,
        KeyFormat::Legacy => DEADLINE_VERSIONS,
        _ => FORMAT_VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_keeps_the_key_format_and_adds_the_column() {
        for version in 0..=FORMAT_VERSION {
            let upgraded = with_deadlines(version);
            assert!(has_deadlines(upgraded), "{version}");
            assert!(upgraded <= FORMAT_VERSION);
            assert_eq!(key_format_of(upgraded), key_format_of(version), "{version}");
        }
        assert_eq!(with_deadlines(1), 3);
        assert_eq!(with_deadlines(2), 4);
        assert!(!has_deadlines(2));
        assert_eq!(new_table_version(KeyFormat::Distinct), FORMAT_VERSION);
        assert_eq!(new_table_version(KeyFormat::Legacy), LEGACY_VERSION);
    }
}
