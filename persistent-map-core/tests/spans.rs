//! The map's `tracing` spans, with their fields: open (entries, duration),
//! commit (batch size, duration), flush and resync, each naming the map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use persistent_map_core::PersistentMap;
use persistent_map_memory::InMemoryBackend;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: its name and every field recorded, as text.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    fields: HashMap<String, String>,
}

/// Records every span (by id) and every value recorded into it later.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(Id, Seen)>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let seen = Seen {
            name: attrs.metadata().name(),
            fields,
        };
        self.spans.lock().expect("lock").push((id.clone(), seen));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().expect("lock");
        // Ids are reused once a span closes: the latest span with it is this one.
        if let Some((_, seen)) = spans.iter_mut().rev().find(|(seen_id, _)| seen_id == id) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

impl Capture {
    fn named(&self, name: &str) -> Vec<Seen> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, seen)| seen.name == name)
            .map(|(_, seen)| seen.clone())
            .collect()
    }
}

fn field<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.fields
        .get(name)
        .unwrap_or_else(|| panic!("span {} has no field {name}: {seen:?}", seen.name))
}

// A current-thread runtime: the writer task runs on this thread too, so the
// thread-local subscriber sees its spans.
#[tokio::test(flavor = "current_thread")]
async fn open_commit_flush_and_resync_spans_carry_their_fields() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let backend = InMemoryBackend::new();
    let first: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    first
        .extend([("a".to_string(), 1), ("b".to_string(), 2)])
        .await
        .expect("extend");
    first.close().await.expect("close");
    drop(first);

    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend)
        .name("spans")
        .build()
        .await
        .expect("reopen");
    map.insert("c".to_string(), 3).await.expect("insert");
    map.insert_many([
        ("d".to_string(), 4),
        ("e".to_string(), 5),
        ("f".to_string(), 6),
    ])
    .await
    .expect("insert_many");
    map.flush().await.expect("flush");
    map.reload().await.expect("reload");

    let opens = capture.named("persistent_map.open");
    assert_eq!(opens.len(), 2, "{opens:?}");
    let open = &opens[1];
    assert_eq!(field(open, "map"), "spans");
    assert_eq!(field(open, "entries"), "2");
    field(open, "duration_us")
        .parse::<u64>()
        .expect("a duration");
    assert_eq!(field(&opens[0], "map"), "default");
    assert_eq!(field(&opens[0], "entries"), "0");

    let commits: Vec<Seen> = capture
        .named("persistent_map.commit")
        .into_iter()
        .filter(|seen| field(seen, "map") == "spans")
        .collect();
    let sizes: Vec<&str> = commits.iter().map(|seen| field(seen, "batch")).collect();
    assert_eq!(sizes, ["1", "3"]);
    for commit in &commits {
        field(commit, "duration_us")
            .parse::<u64>()
            .expect("a duration");
    }

    let flushes = capture.named("persistent_map.flush");
    assert!(
        flushes.iter().any(|seen| field(seen, "map") == "spans"),
        "{flushes:?}"
    );

    let resyncs = capture.named("persistent_map.resync");
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    assert_eq!(field(&resyncs[0], "map"), "spans");
    assert_eq!(field(&resyncs[0], "reason"), "reload");
    assert_eq!(field(&resyncs[0], "entries"), "6");
}
