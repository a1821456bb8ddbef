//! Store URLs: `sqlite:PATH[?table=T]`, `csv:PATH`,
//! `postgres://…[?table=T&schema=S]`, `redis://…/DB[?prefix=P&name=N]`, and
//! the form they are shown in, with any password replaced by `***`.

use std::fmt;
use std::path::PathBuf;

use persistent_map_server_support::redact_url;

use crate::error::CliError;

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreName {
    /// A table of a SQLite file.
    Sqlite { path: PathBuf, table: String },
    /// A CSV file.
    Csv { path: PathBuf },
    /// A table of a PostgreSQL database.
    Postgres {
        /// The connection URL, without the `table` and `schema` parameters.
        url: String,
        schema: String,
        table: String,
        /// The URL as given, password redacted.
        shown: String,
    },
    /// A hash of a Redis database.
    Redis {
        /// The connection URL, without the `prefix` and `name` parameters.
        url: String,
        prefix: String,
        name: String,
        /// The URL as given, password redacted.
        shown: String,
    },
}

impl StoreName {
    /// Whether both names reach the same store, however they are spelled:
    /// file paths are compared once resolved (`app.db` and `./app.db`),
    /// server stores by their parsed URL, schema and table (or prefix and name).
    pub fn same_store(&self, other: &StoreName) -> bool {
        let resolved =
            |path: &PathBuf| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        match (self, other) {
            (StoreName::Sqlite { path: a, table: t }, StoreName::Sqlite { path: b, table: u }) => {
                t == u && resolved(a) == resolved(b)
            }
            (StoreName::Csv { path: a }, StoreName::Csv { path: b }) => resolved(a) == resolved(b),
            _ => self == other,
        }
    }

    /// Parses a store URL. Every error is a usage error (exit code 2), and
    /// never repeats a password.
    pub fn parse(text: &str) -> Result<Self, CliError> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let (path, params) = split_query(rest);
            let mut table = persistent_map_sqlite::DEFAULT_TABLE.to_owned();
            for (name, value) in params {
                match name.as_str() {
                    "table" => table = value,
                    _ => return Err(unknown_param(&name, "sqlite", "table")),
                }
            }
            return Ok(StoreName::Sqlite {
                path: file_path(path, text)?,
                table,
            });
        }
        if let Some(rest) = text.strip_prefix("csv:") {
            let (path, params) = split_query(rest);
            if let Some((name, _)) = params.into_iter().next() {
                return Err(unknown_param(&name, "csv", "no parameters"));
            }
            return Ok(StoreName::Csv {
                path: file_path(path, text)?,
            });
        }
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("postgres" | "postgresql") => {
                let (url, shown, params) = server_url(text)?;
                let mut schema = persistent_map_postgres::DEFAULT_SCHEMA.to_owned();
                let mut table = persistent_map_postgres::DEFAULT_TABLE.to_owned();
                for (name, value) in params {
                    match name.as_str() {
                        "schema" => schema = value,
                        "table" => table = value,
                        _ => unreachable_param(&name)?,
                    }
                }
                Ok(StoreName::Postgres {
                    url,
                    schema,
                    table,
                    shown,
                })
            }
            Some("redis" | "rediss") => {
                let (url, shown, params) = server_url(text)?;
                let mut prefix = persistent_map_redis::DEFAULT_PREFIX.to_owned();
                let mut name = persistent_map_redis::DEFAULT_NAME.to_owned();
                for (param, value) in params {
                    match param.as_str() {
                        "prefix" => prefix = value,
                        "name" => name = value,
                        _ => unreachable_param(&param)?,
                    }
                }
                Ok(StoreName::Redis {
                    url,
                    prefix,
                    name,
                    shown,
                })
            }
            _ => Err(CliError::Usage(format!(
                "{:?} is not a store URL: use sqlite:PATH[?table=T], csv:PATH, \
                 postgres://USER@HOST/DB[?table=T&schema=S] or redis://HOST[:PORT]/DB[?prefix=P&name=N]",
                redact(text)
            ))),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreName::Sqlite { .. } => "sqlite",
            StoreName::Csv { .. } => "csv",
            StoreName::Postgres { .. } => "postgres",
            StoreName::Redis { .. } => "redis",
        }
    }
}

/// Shows the store as a URL, password redacted, with the table, schema,
/// prefix or name it resolves to.
impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreName::Sqlite { path, table } => {
                write!(f, "sqlite:{}?table={table}", path.display())
            }
            StoreName::Csv { path } => write!(f, "csv:{}", path.display()),
            StoreName::Postgres {
                shown,
                schema,
                table,
                ..
            } => write!(f, "{shown} (table \"{schema}\".\"{table}\")"),
            StoreName::Redis {
                shown,
                prefix,
                name,
                ..
            } => write!(f, "{shown} (hash {prefix}:{name})"),
        }
    }
}

/// Never shows the connection URL, which may hold a password.
impl fmt::Debug for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreName({self})")
    }
}

/// Splits `PATH?a=1&b=2` into the path and its decoded parameters.
fn split_query(rest: &str) -> (&str, Vec<(String, String)>) {
    match rest.rsplit_once('?') {
        Some((path, query)) => (
            path,
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ),
        None => (rest, Vec::new()),
    }
}

/// `sqlite:app.db`, `sqlite:/abs/app.db` and `sqlite://app.db` all name a path.
fn file_path(path: &str, whole: &str) -> Result<PathBuf, CliError> {
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err(CliError::Usage(format!("{whole:?} names no file")));
    }
    Ok(PathBuf::from(path))
}

fn unknown_param(name: &str, backend: &str, known: &str) -> CliError {
    CliError::Usage(format!(
        "unknown parameter {name:?} in a {backend} store URL (accepted: {known})"
    ))
}

fn unreachable_param(name: &str) -> Result<(), CliError> {
    Err(CliError::Usage(format!(
        "parameter {name:?} is not a store parameter"
    )))
}

/// A connection URL, its shown (redacted) form, and the store's parameters.
type ServerUrl = (String, String, Vec<(String, String)>);

/// Parses a server URL, takes out the store's own parameters (`table` and
/// `schema`, `prefix` and `name`) and returns the connection URL, the shown
/// (redacted) URL and those parameters. Other parameters (`sslmode`, ...)
/// stay in the connection URL.
fn server_url(text: &str) -> Result<ServerUrl, CliError> {
    let mut url = url::Url::parse(text)
        .map_err(|e| CliError::Usage(format!("invalid store URL {:?}: {e}", redact(text))))?;
    const OURS: [&str; 4] = ["table", "schema", "prefix", "name"];
    let is_postgres = url.scheme().starts_with("postgres");
    let mut ours = Vec::new();
    let mut kept = Vec::new();
    for (name, value) in url.query_pairs() {
        let mine = if is_postgres {
            matches!(name.as_ref(), "table" | "schema")
        } else {
            matches!(name.as_ref(), "prefix" | "name")
        };
        if mine {
            ours.push((name.into_owned(), value.into_owned()));
        } else if OURS.contains(&name.as_ref()) {
            return Err(CliError::Usage(format!(
                "parameter {name:?} does not apply to a {} store URL",
                url.scheme()
            )));
        } else {
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    let shown = redact_url(url.as_str());
    Ok((url.to_string(), shown, ours))
}

/// The passwords in any of `args` that is a URL (decoded and as written),
/// to be hidden from every message, whatever produced it.
pub fn passwords(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut found = Vec::new();
    for arg in args {
        let Ok(url) = url::Url::parse(&arg) else {
            continue;
        };
        if let Some(password) = url.password().filter(|p| !p.is_empty()) {
            found.push(password.to_owned());
            found.push(percent_decoded(password));
        }
        for (name, value) in url.query_pairs() {
            if name.to_ascii_lowercase().contains("password") && !value.is_empty() {
                found.push(value.into_owned());
            }
        }
    }
    // Longest first, so a password containing another is hidden whole.
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found.dedup();
    found
}

/// `%xx` escapes undone (a URL's user info keeps `+` as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Any text that may be a URL, redacted for an error message. A text
/// without `@`, `?` or `#` cannot hold a password anywhere the URL grammar
/// puts one (a file name given where a URL was expected) and is shown as
/// it is; any other is shown as [`redact_url`] shows it.
fn redact(text: &str) -> String {
    if text.contains(['@', '?', '#']) {
        redact_url(text)
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> StoreName {
        StoreName::parse(text).expect("parses")
    }

    #[test]
    fn file_stores() {
        assert_eq!(
            parse("sqlite:app.db"),
            StoreName::Sqlite {
                path: "app.db".into(),
                table: "kv".into()
            }
        );
        assert_eq!(
            parse("sqlite:///data/app.db?table=users"),
            StoreName::Sqlite {
                path: "/data/app.db".into(),
                table: "users".into()
            }
        );
        assert_eq!(
            parse("csv:data/users.csv"),
            StoreName::Csv {
                path: "data/users.csv".into()
            }
        );
        assert!(matches!(
            StoreName::parse("sqlite:app.db?tabel=x"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            StoreName::parse("app.db"),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn server_stores_keep_their_parameters_and_hide_passwords() {
        let name =
            parse("postgres://app:s3cret@db:5432/prod?table=users&schema=app&sslmode=disable");
        let StoreName::Postgres {
            url,
            schema,
            table,
            shown,
        } = &name
        else {
            panic!("{name:?}")
        };
        assert_eq!(url, "postgres://app:s3cret@db:5432/prod?sslmode=disable");
        assert_eq!((schema.as_str(), table.as_str()), ("app", "users"));
        // Every parameter's value is hidden, not only those named like a
        // password (a driver may read a secret from any of them).
        assert_eq!(shown, "postgres://app:***@db:5432/prod?sslmode=***");
        assert!(!name.to_string().contains("s3cret"));
        assert!(!format!("{name:?}").contains("s3cret"));

        let name = parse("redis://:pw@cache:6379/2?prefix=app&name=sessions");
        let StoreName::Redis {
            url,
            prefix,
            name: n,
            shown,
        } = &name
        else {
            panic!("{name:?}")
        };
        assert_eq!(url, "redis://:pw@cache:6379/2");
        assert_eq!((prefix.as_str(), n.as_str()), ("app", "sessions"));
        assert_eq!(shown, "redis://:***@cache:6379/2");
    }

    #[test]
    fn passwords_are_found_in_urls() {
        let found = passwords(
            [
                "info",
                "postgres://u:p%40ss@db/x?password=other",
                "sqlite:a.db",
            ]
            .into_iter()
            .map(String::from),
        );
        assert_eq!(found, ["p%40ss", "other", "p@ss"]);
    }

    #[test]
    fn errors_never_repeat_a_password() {
        let err = StoreName::parse("mysql://u:s3cret@db/x").expect_err("unknown scheme");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = StoreName::parse("postgres://u:s3cret@db/x?prefix=p").expect_err("wrong param");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = StoreName::parse("postgres://u:s3cret@db:port/x").expect_err("bad port");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = StoreName::parse("app.db").expect_err("not a URL");
        assert!(err.to_string().contains("\"app.db\""), "{err}");
    }
}
