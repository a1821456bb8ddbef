//! [`redact_url`]: a connection URL in a form safe to log or show.

/// A connection URL in a form safe to show: `postgres://user:***@host/db?sslmode=***`.
///
/// Parsed with the `url` crate, so a password is found wherever the URL
/// grammar puts it: the password in the user info becomes `***`, every
/// query parameter keeps its name but not its value (`?password=`,
/// `?pass=`, `?sslpassword=`, or any other name a driver may read a secret
/// from), and the fragment is dropped. A text that does not parse as a URL
/// is not shown at all: `<unparsable url>`.
///
/// ```
/// use persistent_map_server_support::redact_url;
///
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/app?sslmode=require"),
///     "postgres://app:***@db:5432/app?sslmode=***"
/// );
/// assert_eq!(redact_url("redis://u@cache?password=x"), "redis://u@cache?password=***");
/// assert_eq!(redact_url("redis://u:s3cret/x@cache"), "<unparsable url>");
/// ```
#[must_use]
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return String::from("<unparsable url>");
    };
    if url.password().is_some() {
        // Only fails for a URL without a host, which has no password.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| name.into_owned())
            .collect();
        url.set_query(None);
        if !names.is_empty() {
            let mut query = url.query_pairs_mut();
            for name in &names {
                query.append_pair(name, "***");
            }
        }
    }
    url.set_fragment(None);
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of the three redactors this one replaces (Postgres, Redis
    /// and the command-line tool's).
    #[test]
    fn postgres_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app?sslmode=require&password=x"),
            "postgres://app:***@db:5432/app?sslmode=***&password=***"
        );
        assert_eq!(redact_url("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact_url("postgres://db"), "postgres://db");
        assert_eq!(
            redact_url("postgres://u@host?password=x"),
            "postgres://u@host?password=***"
        );
        assert_eq!(
            redact_url("postgres://u:p%2Fq%40r@host/db#p"),
            "postgres://u:***@host/db"
        );
        assert_eq!(redact_url("postgres://u:x@host:port"), "<unparsable url>");
    }

    #[test]
    fn redis_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:s3cret@cache:6379/2"),
            "redis://user:***@cache:6379/2"
        );
        assert_eq!(redact_url("redis://:s3cret@cache"), "redis://:***@cache");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=***&pass=***"
        );
        assert_eq!(
            redact_url("redis://u@cache?password=s3cret"),
            "redis://u@cache?password=***"
        );
        assert_eq!(redact_url("redis://u:s3cret/x@cache"), "<unparsable url>");
    }

    #[test]
    fn command_line_store_urls_are_redacted() {
        // The tool's own rule kept values of parameters not named like a
        // password (`sslmode=disable`); the stronger rule hides them all.
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/prod?sslmode=disable"),
            "postgres://app:***@db:5432/prod?sslmode=***"
        );
        assert_eq!(
            redact_url("redis://:pw@cache:6379/2"),
            "redis://:***@cache:6379/2"
        );
        for secret in [
            "mysql://u:s3cret@db/x",
            "postgres://u:s3cret@db/x?prefix=p",
            "postgres://u@db/x?sslpassword=s3cret",
            "postgres://u@db/x?PassWord=s3cret",
        ] {
            assert!(!redact_url(secret).contains("s3cret"), "{secret}");
        }
    }
}
