//! The shared conformance suite, on a real PostgreSQL server: each case in a
//! schema of its own, dropped afterwards. Needs `PERSISTENT_MAP_POSTGRES_URL`.

mod common;

use common::Scratch;
use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_postgres::PostgresBackend;

/// Opens each fresh store as a new table in the case's own schema.
struct PostgresFactory {
    scratch: Scratch,
    stores: u32,
    /// The schema and table a child process opened by their locator (the
    /// parent's scratch schema, which the parent drops).
    attached: Option<(String, String)>,
}

impl PostgresFactory {
    fn new() -> Self {
        let url = std::env::var(common::URL_VAR).expect("checked by skip_if");
        Self {
            scratch: Scratch::new(url),
            stores: 0,
            attached: None,
        }
    }

    fn names(&self) -> (String, String) {
        self.attached
            .clone()
            .unwrap_or_else(|| (self.scratch.schema.clone(), format!("map_{}", self.stores)))
    }

    async fn open(&self) -> persistent_map_core::Result<PostgresBackend> {
        let (schema, table) = self.names();
        PostgresBackend::builder(&self.scratch.url)
            .schema(schema)
            .table(table)
            .pool_size(2)
            .build()
            .await
    }
}

#[async_trait]
impl StoreFactory for PostgresFactory {
    type Backend = PostgresBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<PostgresBackend> {
        self.stores += 1;
        self.open().await
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<PostgresBackend> {
        self.open().await
    }

    fn locator(&self) -> Option<String> {
        let (schema, table) = self.names();
        Some(format!("{schema}.{table}"))
    }

    async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<PostgresBackend> {
        let (schema, table) = locator.split_once('.').ok_or_else(|| {
            persistent_map_core::PersistentError::Other(format!("bad locator {locator:?}").into())
        })?;
        self.attached = Some((schema.to_owned(), table.to_owned()));
        self.open().await
    }

    /// A trigger on the map's table, created through a connection of its
    /// own, that raises an error for any row whose key contains `key`.
    async fn fail_writes_of(&mut self, key: &str) -> persistent_map_core::Result<bool> {
        use sqlx::Connection as _;
        let io = |err: sqlx::Error| persistent_map_core::PersistentError::Other(Box::new(err));
        let (schema, table) = self.names();
        let key = key.replace('\'', "''");
        let mut conn = sqlx::PgConnection::connect(&self.scratch.url)
            .await
            .map_err(io)?;
        let function = format!("\"{schema}\".\"fail_{table}\"");
        let statements = [
            format!(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF strpos(NEW.key, '{key}') > 0 THEN \
                 RAISE EXCEPTION 'injected failure for the conformance suite'; END IF; \
                 RETURN NEW; END $$"
            ),
            format!(
                "CREATE TRIGGER \"fail_{table}\" BEFORE INSERT OR UPDATE ON \"{schema}\".\"{table}\" \
                 FOR EACH ROW EXECUTE FUNCTION {function}()"
            ),
        ];
        for sql in statements {
            sqlx::query(&sql).execute(&mut conn).await.map_err(io)?;
        }
        conn.close().await.map_err(io)?;
        Ok(true)
    }
}

conformance_tests!(PostgresFactory::new(), skip_if = common::skip_reason());
